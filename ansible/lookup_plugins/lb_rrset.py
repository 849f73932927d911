# Reads RRsets straight from one DNS server (the zone's primary), optionally TSIG-signed, so
# the dns role can compare what the server holds with what the inventory wants and show the
# change before making it. Unlike community.general.dig it takes a port, tells "no such
# record" (NXDOMAIN / NODATA: an empty set) from a server that does not answer (an error),
# and reports a rejected TSIG key as such.
#
#   query('lb_rrset', 'cloud.example.org./A', 'example.org./SOA', server='192.0.2.53',
#         port=53, protocol='tcp', key_name='k', key_secret='base64', key_algorithm='hmac-sha256')
#   -> [{'values': ['192.0.2.11', ...], 'ttl': 300}, {'values': [...], 'ttl': ...}]
#   (values sorted; TXT values without their quotes; ttl None when there is no record)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: lb_rrset
short_description: read RRsets from one DNS server, optionally TSIG-signed
description:
  - Each term is NAME/TYPE; returns one dict per term with the sorted record values and the TTL.
options:
  _terms:
    description: NAME/TYPE pairs.
    required: true
  server:
    description: Address (or name) of the server.
    required: true
  port:
    description: Port.
    default: 53
  protocol:
    description: tcp or udp.
    default: tcp
  key_name:
    description: TSIG key name; none means unsigned queries.
  key_secret:
    description: TSIG secret (base64).
  key_algorithm:
    description: TSIG algorithm.
    default: hmac-sha256
  timeout:
    description: Seconds per query.
    default: 5
"""

import binascii
import socket

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

try:
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rcode
    import dns.rdatatype
    import dns.tsig
    import dns.tsigkeyring

    HAVE_DNSPYTHON = True
except ImportError:
    HAVE_DNSPYTHON = False


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if not HAVE_DNSPYTHON:
            raise AnsibleError('lb_rrset needs dnspython on the controller (Debian: python3-dnspython)')
        self.set_options(var_options=variables, direct=kwargs)
        server = str(self.get_option('server'))
        port = int(self.get_option('port'))
        protocol = self.get_option('protocol')
        timeout = float(self.get_option('timeout'))
        key_name = self.get_option('key_name')
        try:
            address = socket.getaddrinfo(server, port, proto=socket.IPPROTO_TCP)[0][4][0]
        except socket.gaierror as e:
            raise AnsibleError('lb_rrset: cannot resolve the DNS server %r: %s' % (server, e))

        keyring = None
        algorithm = None
        if key_name:
            algorithm = self.get_option('key_algorithm')
            if algorithm.lower() == 'hmac-md5':
                algorithm = 'HMAC-MD5.SIG-ALG.REG.INT'
            try:
                keyring = dns.tsigkeyring.from_text({key_name: self.get_option('key_secret') or ''})
            except (binascii.Error, ValueError, TypeError) as e:
                raise AnsibleError('the TSIG secret of key %r is not valid base64 (dns_tsig_key_secret): %s' % (key_name, e))

        ret = []
        for term in terms:
            name, _, rtype = str(term).rpartition('/')
            if not name or not rtype:
                raise AnsibleError('lb_rrset: %r is not NAME/TYPE' % (term,))
            qname = dns.name.from_text(name)
            rdtype = dns.rdatatype.from_text(rtype)
            query = dns.message.make_query(qname, rdtype)
            query.flags &= ~dns.flags.RD
            if keyring is not None:
                query.use_tsig(keyring=keyring, keyname=key_name, algorithm=algorithm)
            try:
                if protocol == 'udp':
                    resp = dns.query.udp(query, address, timeout=timeout, port=port)
                else:
                    resp = dns.query.tcp(query, address, timeout=timeout, port=port)
            except dns.tsig.PeerBadKey:
                raise AnsibleError(
                    'TSIG: the DNS server %s:%d does not know the key %r (BADKEY): check dns_tsig_key_name '
                    'and dns_tsig_algorithm against the server\'s configuration' % (server, port, key_name))
            except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
                raise AnsibleError(
                    'TSIG: the DNS server %s:%d rejected the signature of key %r (BADSIG): dns_tsig_key_secret '
                    'or dns_tsig_algorithm does not match the server\'s' % (server, port, key_name))
            except dns.tsig.PeerError as e:
                raise AnsibleError('TSIG: the DNS server %s:%d rejected key %r: %s' % (server, port, key_name, e))
            except (OSError, dns.exception.Timeout, EOFError) as e:
                raise AnsibleError('the DNS server %s:%d (dns_server, dns_port) did not answer %s %s: %s'
                                   % (server, port, name, rtype, e or e.__class__.__name__))
            rcode = resp.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                ret.append({'values': [], 'ttl': None})
                continue
            if rcode != dns.rcode.NOERROR:
                raise AnsibleError('the DNS server %s:%d answered %s to %s %s (is it authoritative for the zone?)'
                                   % (server, port, dns.rcode.to_text(rcode), name, rtype))
            values = []
            ttl = None
            for rrset in resp.answer:
                if rrset.name == qname and rrset.rdtype == rdtype:
                    ttl = rrset.ttl
                    for rd in rrset:
                        text = rd.to_text()
                        if rdtype == dns.rdatatype.TXT and text.startswith('"') and text.endswith('"'):
                            text = text[1:-1]
                        values.append(text)
            ret.append({'values': sorted(values), 'ttl': ttl})
        return ret

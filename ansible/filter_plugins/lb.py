# Filters for the roll-out: address and port checks for the validation plays (Python's own
# ipaddress module, so no netaddr / ansible.utils is needed on the controller) and TOML
# rendering of inventory values for the config templates.
#
#   "203.0.113.10" | lb_ip_version      -> 4 (6 for IPv6, 0 when not an address)
#   "2001:DB8::0:1" | lb_ip_canonical   -> "2001:db8::1" (the text DNS answers use)
#   "200:1::1" | lb_is_yggdrasil        -> true when inside 200::/7
#   "49160-49200" | lb_port_problem     -> "" (or the reason a port / range is invalid)
#   "1514/udp" | lb_listen_problem      -> "" (or why a local-proxy stream listen is invalid)
#   value | lb_toml                     -> a TOML value (string, number, bool, array, inline table)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re
import socket

from ansible.errors import AnsibleFilterError
from ansible.module_utils.six import string_types


def _addr(value):
    if not isinstance(value, string_types):
        return None
    text = value.strip()
    if text.startswith('[') and text.endswith(']'):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def lb_ip_version(value):
    a = _addr(value)
    return 0 if a is None else a.version


def lb_ip_canonical(value):
    a = _addr(value)
    if a is None:
        raise AnsibleFilterError('lb_ip_canonical: %r is not an IP address' % (value,))
    return str(a)


def lb_host_address(value):
    """An IP address for a host given by address or name, resolved here (on the controller):
    community.general.nsupdate takes an address only (a name fails deep in dnspython)."""
    a = _addr(value)
    if a is not None:
        return str(a)
    try:
        return socket.getaddrinfo(str(value), None, 0, socket.SOCK_STREAM)[0][4][0]
    except (OSError, UnicodeError, IndexError) as e:
        raise AnsibleFilterError('lb_host_address: cannot resolve %r: %s' % (value, e))


def lb_is_yggdrasil(value):
    a = _addr(value)
    return a is not None and a.version == 6 and a in ipaddress.ip_network('200::/7')


def lb_port_problem(value):
    """'' when value is a port (1..65535) or a range FIRST-LAST with FIRST <= LAST."""
    if isinstance(value, bool):
        return 'is a boolean, not a port'
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, string_types):
        return 'is not a port or a FIRST-LAST range'
    m = re.fullmatch(r'([0-9]{1,5})(?:-([0-9]{1,5}))?', value.strip())
    if not m:
        return '%r is not a port or a FIRST-LAST range' % (value,)
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else first
    if not 1 <= first <= 65535 or not 1 <= last <= 65535:
        return '%r: ports are 1..65535' % (value,)
    if first > last:
        return '%r: the range runs backwards' % (value,)
    return ''


def lb_listen_problem(value):
    """'' when value is a local-proxy stream listen: PORT, PORT/tcp, PORT/udp, FIRST-LAST/udp."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, string_types):
        return 'is not PORT, PORT/tcp, PORT/udp or FIRST-LAST/udp'
    port, _, proto = value.partition('/')
    if proto not in ('', 'tcp', 'udp'):
        return '%r: the protocol is /tcp or /udp' % (value,)
    problem = lb_port_problem(port)
    if problem:
        return problem
    if '-' in port and proto != 'udp':
        return '%r: a port range needs /udp' % (value,)
    return ''


_BARE_KEY = re.compile(r'^[A-Za-z0-9_-]+$')


def _key(k):
    k = str(k)
    return k if _BARE_KEY.match(k) else json.dumps(k)


def lb_toml(value):
    """A TOML value: JSON's string escapes are valid TOML basic-string escapes."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, string_types):
        return json.dumps(str(value))
    if isinstance(value, dict):
        return '{ ' + ', '.join('%s = %s' % (_key(k), lb_toml(v)) for k, v in value.items()) + ' }'
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(lb_toml(v) for v in value) + ']'
    if value is None:
        raise AnsibleFilterError('lb_toml: TOML has no null; leave the key out instead')
    raise AnsibleFilterError('lb_toml: cannot render %r' % (value,))


_DURATION_PART = re.compile(r'\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]+)')
_UNIT_SECONDS = {
    'ns': 1e-9, 'nsec': 1e-9, 'us': 1e-6, 'usec': 1e-6, 'ms': 1e-3, 'msec': 1e-3,
    's': 1, 'sec': 1, 'secs': 1, 'second': 1, 'seconds': 1,
    'm': 60, 'min': 60, 'mins': 60, 'minute': 60, 'minutes': 60,
    'h': 3600, 'hr': 3600, 'hrs': 3600, 'hour': 3600, 'hours': 3600,
    'd': 86400, 'day': 86400, 'days': 86400,
}


def lb_seconds(value):
    """A duration as the binaries read it ("30s", "2m", "1h 30m") in seconds."""
    text = str(value).strip()
    total, pos = 0.0, 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m or m.group(2) not in _UNIT_SECONDS:
            raise AnsibleFilterError('lb_seconds: %r is not a duration like "30s" or "2m"' % (value,))
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not text:
        raise AnsibleFilterError('lb_seconds: an empty duration')
    return total


class FilterModule(object):
    def filters(self):
        return {
            'lb_ip_version': lb_ip_version,
            'lb_seconds': lb_seconds,
            'lb_ip_canonical': lb_ip_canonical,
            'lb_host_address': lb_host_address,
            'lb_is_yggdrasil': lb_is_yggdrasil,
            'lb_port_problem': lb_port_problem,
            'lb_listen_problem': lb_listen_problem,
            'lb_toml': lb_toml,
            'lb_toml_key': _key,
        }

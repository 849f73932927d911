# The dns role's record set and change plan, in Python so they can be read and reasoned about.
#
# lb_dns_records(nodes, published, mesh, mesh_mode, mesh_suffix, set_name, node_records, zone)
#   nodes: [{'host': inventory name, 'name': the node's DNS name, 'addresses': [...]}]
#   -> [{'name': relative name, 'fqdn': 'x.zone.', 'type': 'A'|'AAAA', 'values': [...]}]
#      for every published name (A/AAAA of every node, the home's mesh AAAA per mesh_mode),
#      the separate mesh names, the name listing every node (set_name) and each node's own
#      name. Both types of every name are listed, empty when the name has none (so stale
#      values are removed).
#
# lb_dns_plan(desired, current, stale, registry, registry_current, ttl, zone)
#   -> the ordered changes: the registry grows first (names about to be written), then every
#      RRset that differs (values or TTL), then the records of names that left the inventory,
#      then the registry shrinks to the current names. Each change: name, fqdn, type, old,
#      new, state (present|absent), why.
#
# community.general.nsupdate with state=present and the full value list replaces the RRset:
# it asks the server whether the RRset is exactly those values (an RFC 2136 value-dependent
# prerequisite, which must match the whole RRset), and when not, sends one update that
# deletes the RRset and adds the values (atomic: never empty in between). So a removed
# ingress node's address goes too (checked against knot by tests/netns/tests/rollout_dns.rs).

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError


def _canon(a):
    try:
        return str(ipaddress.ip_address(str(a).strip('[]')))
    except ValueError:
        raise AnsibleFilterError('%r is not an IP address' % (a,))


def _fqdn(name, zone):
    zone = zone.rstrip('.') + '.'
    if name in ('@', ''):
        return zone
    return '%s.%s' % (name, zone)


def lb_dns_fqdn(name, zone):
    """The absolute name of a relative one ('@' is the apex), as the plan looks it up."""
    return _fqdn(str(name), str(zone))


def lb_dns_relative(name, zone):
    """The name relative to zone ('@' for the apex), or '' when it is outside the zone."""
    n = str(name).rstrip('.').lower()
    z = zone.rstrip('.').lower()
    if n == z:
        return '@'
    if n.endswith('.' + z):
        return n[:-(len(z) + 1)]
    return ''


def lb_dns_mesh_name(name, suffix):
    if name == '@':
        return suffix.lstrip('-.') or 'mesh'
    first, dot, rest = name.partition('.')
    return first + suffix + dot + rest


def lb_dns_records(nodes, published, mesh, mesh_mode, mesh_suffix, set_name, node_records, zone):
    v4 = []
    v6 = []
    for node in nodes:
        for a in node['addresses']:
            c = _canon(a)
            target = v4 if ipaddress.ip_address(c).version == 4 else v6
            if c not in target:
                target.append(c)
    mesh = _canon(mesh) if mesh else ''
    records = {}

    def put(name, rtype, values):
        key = (name, rtype)
        if key in records and sorted(records[key]) != sorted(values):
            raise AnsibleFilterError('the DNS name %r is wanted twice with different %s records: %s and %s '
                                     '(dns_published_names, ingress_dns_name, ingress_set_name)'
                                     % (_fqdn(name, zone), rtype, sorted(records[key]), sorted(values)))
        records[key] = sorted(set(values))

    for name in published:
        name = str(name)
        put(name, 'A', v4)
        put(name, 'AAAA', v6 + ([mesh] if mesh and mesh_mode == 'same_name' else []))
        if mesh and mesh_mode == 'separate':
            m = lb_dns_mesh_name(name, mesh_suffix)
            put(m, 'A', [])
            put(m, 'AAAA', [mesh])
    if set_name:
        put(set_name, 'A', v4)
        put(set_name, 'AAAA', v6)
    if node_records:
        for node in nodes:
            rel = lb_dns_relative(node['name'], zone)
            if not rel:
                raise AnsibleFilterError('ingress_dns_name of %s (%s) is outside dns_zone %s: its records cannot be '
                                         'managed here (set dns_node_records: false or use a name in the zone)'
                                         % (node['host'], node['name'], zone))
            addrs = [_canon(a) for a in node['addresses']]
            put(rel, 'A', [a for a in addrs if ipaddress.ip_address(a).version == 4])
            put(rel, 'AAAA', [a for a in addrs if ipaddress.ip_address(a).version == 6])
    return [{'name': n, 'fqdn': _fqdn(n, zone), 'type': t, 'values': v} for (n, t), v in sorted(records.items())]


def lb_dns_plan(desired, current, stale, registry, registry_current, ttl, zone):
    """current: {'fqdn/TYPE': {'values': [...], 'ttl': n}}; stale: names to delete;
    registry: the registry's relative name; registry_current: the names it lists now."""
    ttl = int(ttl)
    plan = []
    names = sorted(set(d['name'] for d in desired))
    reg_fqdn = _fqdn(registry, zone)
    have = sorted(set(registry_current))
    grown = sorted(set(have) | set(names))
    if grown != have:
        plan.append({'name': registry, 'fqdn': reg_fqdn, 'type': 'TXT', 'old': have, 'new': grown,
                     'state': 'present', 'why': 'names about to be written'})
        have_ttl = ttl
    else:
        have_ttl = current.get(reg_fqdn + '/TXT', {}).get('ttl')
    for d in desired:
        cur = current.get(d['fqdn'] + '/' + d['type'], {'values': [], 'ttl': None})
        old, new = sorted(cur['values']), sorted(d['values'])
        if not new:
            if old:
                plan.append({'name': d['name'], 'fqdn': d['fqdn'], 'type': d['type'], 'old': old, 'new': [],
                             'state': 'absent', 'why': 'no value wanted'})
            continue
        if old == new and cur['ttl'] == ttl:
            continue
        plan.append({'name': d['name'], 'fqdn': d['fqdn'], 'type': d['type'], 'old': old, 'new': new,
                     'state': 'present',
                     'why': 'values' if old != new else 'ttl %s -> %s' % (cur['ttl'], ttl)})
    for name in sorted(stale):
        fqdn = _fqdn(name, zone)
        for rtype in ('A', 'AAAA'):
            cur = current.get(fqdn + '/' + rtype, {'values': []})
            if cur['values']:
                plan.append({'name': name, 'fqdn': fqdn, 'type': rtype, 'old': sorted(cur['values']), 'new': [],
                             'state': 'absent', 'why': 'name left the inventory'})
    if names != grown or have_ttl != ttl:
        plan.append({'name': registry, 'fqdn': reg_fqdn, 'type': 'TXT', 'old': grown, 'new': names,
                     'state': 'present', 'why': 'managed names'})
    return plan


def lb_dns_plan_lines(plan):
    """One line per change: 'name TYPE: [old] -> [new] (why)'."""
    out = []
    for c in plan:
        new = '(delete)' if c['state'] == 'absent' else '[%s]' % ' '.join(c['new'])
        out.append('%s %s: [%s] -> %s (%s)' % (c['fqdn'], c['type'], ' '.join(c['old']), new, c['why']))
    return out


class FilterModule(object):
    def filters(self):
        return {
            'lb_dns_records': lb_dns_records,
            'lb_dns_plan': lb_dns_plan,
            'lb_dns_plan_lines': lb_dns_plan_lines,
            'lb_dns_relative': lb_dns_relative,
            'lb_dns_fqdn': lb_dns_fqdn,
            'lb_dns_mesh_name': lb_dns_mesh_name,
        }

package iptables

import "testing"

func TestCanonicalRuleMatchesSaveSpelling(t *testing.T) {
	for _, c := range []struct{ ours, saved string }{
		{`-m comment --comment "ns/a:p80 cluster IP" -m tcp -p tcp -d 172.30.0.1 --dport 80 -j KUBE-SVC-X`,
			`-d 172.30.0.1/32 -p tcp -m comment --comment "ns/a:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-X`},
		{`-m comment --comment "ns/a:p80 -> 10.1.0.1:8080" -m statistic --mode random --probability 0.1000000000 -m recent --name KUBE-SEP-Y --set -m tcp -p tcp -j DNAT --to-destination 10.1.0.1:8080`,
			`-p tcp -m comment --comment "ns/a:p80 -> 10.1.0.1:8080" -m statistic --mode random --probability 0.10000000009 -m recent --set --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.1.0.1:8080`},
		{`-j MARK --or-mark 0x00004000`, `-j MARK --set-xmark 0x4000/0x4000`},
		{`-j MARK --xor-mark 0x00004000`, `-j MARK --set-xmark 0x4000/0x0`},
		{`-m mark ! --mark 0x00004000/0x00004000 -j RETURN`, `-m mark ! --mark 0x4000/0x4000 -j RETURN`},
		{`-m comment --comment "x" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS`,
			`! -d 127.0.0.0/8 -m comment --comment x -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`},
		{`-m comment --comment "ns/b:p80 has no endpoints" -m tcp -p tcp -d fd00::2 --dport 80 -j REJECT`,
			`-d fd00::2/128 -p tcp -m comment --comment "ns/b:p80 has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp6-port-unreachable`},
	} {
		if got, want := canonicalRule(c.ours), canonicalRule(c.saved); got != want {
			t.Errorf("canonical forms differ:\nours  %s\nsaved %s", got, want)
		}
	}
	for _, c := range []struct{ a, b string }{
		{`-s 10.0.0.0/8 -j X`, `! -s 10.0.0.0/8 -j X`},
		{`-m statistic --mode random --probability 0.5000000000 -j X`, `-m statistic --mode random --probability 0.3333333333 -j X`},
		{`-m comment --comment "a b" -j X`, `-m comment --comment "a" -j X`},
		{`-m tcp -p tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80`, `-m tcp -p tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80`},
		{`-m recent --name A --set -j X`, `-m recent --name A --update -j X`},
	} {
		if canonicalRule(c.a) == canonicalRule(c.b) {
			t.Errorf("different rules share the canonical form %q:\n%s\n%s", canonicalRule(c.a), c.a, c.b)
		}
	}
}

package nftables

import (
	"fmt"
	"net/netip"

	gnft "github.com/google/nftables"
	v1 "k8s.io/api/core/v1"
)

// TableName is the name of the table nodeproxy owns in the ip and ip6 families.
const TableName = "nodeproxy"

// UpstreamTableName is the table upstream kube-proxy's nftables mode owns; nodeproxy deletes it
// when it takes over a node and in Cleanup.
const UpstreamTableName = "kube-proxy"

// family holds what differs between the ip and ip6 tables: keywords, address sizes and the
// header offsets rules load addresses from.
type family struct {
	ipFamily v1.IPFamily
	table    gnft.TableFamily
	// kw is the nft keyword of the address expressions ("ip" or "ip6").
	kw string
	// addr is the field type of an address.
	addr fieldType
	// saddrOffset and daddrOffset are the network header offsets of the addresses.
	saddrOffset, daddrOffset uint32
	// loopback is the family's loopback range (never a NodePort address, as upstream).
	loopback netip.Prefix
	// rejectCode is the ICMP code of `reject` (port unreachable).
	rejectCode uint8
	// sets are the table's sets and maps in creation order; setIndex finds them by name.
	sets     []*setSpec
	setIndex map[string]*setSpec
}

func init() {
	for _, f := range []*family{familyIPv4, familyIPv6} {
		f.sets = buildSets(f)
		f.setIndex = make(map[string]*setSpec, len(f.sets))
		for _, s := range f.sets {
			f.setIndex[s.name] = s
		}
	}
}

var (
	familyIPv4 = &family{
		ipFamily:    v1.IPv4Protocol,
		table:       gnft.TableFamilyIPv4,
		kw:          "ip",
		addr:        fieldAddr4,
		saddrOffset: 12,
		daddrOffset: 16,
		loopback:    netip.MustParsePrefix("127.0.0.0/8"),
		rejectCode:  3, // ICMP_PORT_UNREACH
	}
	familyIPv6 = &family{
		ipFamily:    v1.IPv6Protocol,
		table:       gnft.TableFamilyIPv6,
		kw:          "ip6",
		addr:        fieldAddr6,
		saddrOffset: 8,
		daddrOffset: 24,
		loopback:    netip.MustParsePrefix("::1/128"),
		rejectCode:  4, // ICMPV6_PORT_UNREACH
	}
)

// familyOf returns the table description of an IP family.
func familyOf(f v1.IPFamily) (*family, error) {
	switch f {
	case v1.IPv4Protocol:
		return familyIPv4, nil
	case v1.IPv6Protocol:
		return familyIPv6, nil
	}
	return nil, fmt.Errorf("unknown IP family %q", f)
}

// contains reports whether ip belongs to the family.
func (f *family) contains(ip netip.Addr) bool {
	return ip.IsValid() && (ip.Unmap().Is4() == (f.ipFamily == v1.IPv4Protocol))
}

// tableRef names the family's table for google/nftables.
func (f *family) tableRef(name string) *gnft.Table {
	return &gnft.Table{Family: f.table, Name: name}
}

package proxier

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

func udpPort(vip string, port int32, extra ...string) *ServicePort {
	p := &ServicePort{Name: endpoints.ServicePortName{Port: "dns", Protocol: v1.ProtocolUDP}, ClusterIP: netip.MustParseAddr(vip), Port: port, Protocol: v1.ProtocolUDP}
	for _, e := range extra {
		p.ExternalIPs = append(p.ExternalIPs, netip.MustParseAddr(e))
	}
	return p
}

func ep(ip string, serving bool) endpoints.Endpoint {
	return endpoints.Endpoint{IP: netip.MustParseAddr(ip), Port: 53, Ready: serving, Serving: serving}
}

func TestConntrackTargets(t *testing.T) {
	cases := []struct {
		name    string
		change  ServicePortChange
		want    int   // number of targets
		serving []int // len(Serving) per target
		vips    []int // len(VIPs) per target
	}{
		{"tcp port never cleaned", ServicePortChange{Name: endpoints.ServicePortName{Protocol: v1.ProtocolTCP}, Previous: udpPort("10.96.0.10", 53), PreviousEndpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}}, 0, nil, nil},
		{"endpoint added to a served port: nothing stale", ServicePortChange{Previous: udpPort("10.96.0.10", 53), Current: udpPort("10.96.0.10", 53), PreviousEndpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}, Endpoints: []endpoints.Endpoint{ep("10.244.1.2", true), ep("10.244.1.3", true)}}, 0, nil, nil},
		{"endpoint removed", ServicePortChange{Previous: udpPort("10.96.0.10", 53), Current: udpPort("10.96.0.10", 53), PreviousEndpoints: []endpoints.Endpoint{ep("10.244.1.2", true), ep("10.244.1.3", true)}, Endpoints: []endpoints.Endpoint{ep("10.244.1.3", true)}}, 1, []int{1}, []int{1}},
		{"endpoint stopped serving", ServicePortChange{Previous: udpPort("10.96.0.10", 53), Current: udpPort("10.96.0.10", 53), PreviousEndpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}, Endpoints: []endpoints.Endpoint{ep("10.244.1.2", false)}}, 1, []int{0}, []int{1}},
		{"first endpoint", ServicePortChange{Previous: udpPort("10.96.0.10", 53), Current: udpPort("10.96.0.10", 53), Endpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}}, 1, []int{1}, []int{1}},
		{"new port with endpoints", ServicePortChange{Current: udpPort("10.96.0.10", 53), Endpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}}, 1, []int{1}, []int{1}},
		{"service removed while endpoints remain", ServicePortChange{Previous: udpPort("10.96.0.10", 53, "203.0.113.5"), PreviousEndpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}, Endpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}}, 1, []int{0}, []int{2}},
		{"external IP dropped", ServicePortChange{Previous: udpPort("10.96.0.10", 53, "203.0.113.5"), Current: udpPort("10.96.0.10", 53), PreviousEndpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}, Endpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}}, 1, []int{0}, []int{1}},
		{"port number changed", ServicePortChange{Previous: udpPort("10.96.0.10", 53), Current: udpPort("10.96.0.10", 5353), PreviousEndpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}, Endpoints: []endpoints.Endpoint{ep("10.244.1.2", true)}}, 1, []int{0}, []int{1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.change.Name.Protocol == "" {
				tc.change.Name.Protocol = v1.ProtocolUDP
			}
			got := ConntrackTargets([]ServicePortChange{tc.change})
			if len(got) != tc.want {
				t.Fatalf("got %d targets %+v, want %d", len(got), got, tc.want)
			}
			for i := range got {
				if len(got[i].Serving) != tc.serving[i] || len(got[i].VIPs) != tc.vips[i] {
					t.Errorf("target %d: %d serving, %d VIPs; want %d, %d", i, len(got[i].Serving), len(got[i].VIPs), tc.serving[i], tc.vips[i])
				}
			}
		})
	}
}

package node

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"
)

func testConfig(clk *clocktesting.FakeClock) Config {
	return Config{Name: "n1", IPs: []string{"192.168.0.2", "fd00::2"}, PodCIDRs: []string{"10.244.1.0/24", "fd00:1::/64"}, Zone: "z1", Clock: clk}
}

func TestRegisterCreatesReadyNode(t *testing.T) {
	client := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	if err := Register(context.Background(), client, testConfig(clk)); err != nil {
		t.Fatal(err)
	}
	node, err := client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if node.Labels[v1.LabelTopologyZone] != "z1" || node.Labels[v1.LabelHostname] != "n1" {
		t.Errorf("labels %v", node.Labels)
	}
	if node.Spec.PodCIDR != "10.244.1.0/24" || len(node.Spec.PodCIDRs) != 2 {
		t.Errorf("pod CIDRs %q %v", node.Spec.PodCIDR, node.Spec.PodCIDRs)
	}
	want := []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.2"}, {Type: v1.NodeInternalIP, Address: "fd00::2"}, {Type: v1.NodeHostName, Address: "n1"}}
	if len(node.Status.Addresses) != 3 || node.Status.Addresses[0] != want[0] || node.Status.Addresses[1] != want[1] || node.Status.Addresses[2] != want[2] {
		t.Errorf("addresses %v, want %v", node.Status.Addresses, want)
	}
	if len(node.Status.Conditions) != 1 || node.Status.Conditions[0].Type != v1.NodeReady || node.Status.Conditions[0].Status != v1.ConditionTrue {
		t.Errorf("conditions %v, want Ready True", node.Status.Conditions)
	}

	// Registering again keeps the CIDRs; other CIDRs are refused.
	if err := Register(context.Background(), client, testConfig(clk)); err != nil {
		t.Errorf("registering again: %v", err)
	}
	other := testConfig(clk)
	other.PodCIDRs = []string{"10.244.9.0/24"}
	if err := Register(context.Background(), client, other); err == nil {
		t.Error("changing the pod CIDR was accepted")
	}
}

func TestRenewLeaseCreatesThenRenews(t *testing.T) {
	client := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	cfg := testConfig(clk)
	if err := Register(context.Background(), client, cfg); err != nil {
		t.Fatal(err)
	}
	if err := RenewLease(context.Background(), client, cfg); err != nil {
		t.Fatal(err)
	}
	clk.Step(10 * time.Second)
	if err := RenewLease(context.Background(), client, cfg); err != nil {
		t.Fatal(err)
	}
	lease, err := client.CoordinationV1().Leases(LeaseNamespace).Get(context.Background(), "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *lease.Spec.HolderIdentity != "n1" || *lease.Spec.LeaseDurationSeconds != 40 || !lease.Spec.RenewTime.Time.Equal(time.Unix(1010, 0)) {
		t.Errorf("lease spec %+v", lease.Spec)
	}
	if len(lease.OwnerReferences) != 1 || lease.OwnerReferences[0].Kind != "Node" {
		t.Errorf("owner %v, want the Node", lease.OwnerReferences)
	}
}

func TestHeartbeatRenewsEveryInterval(t *testing.T) {
	client := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	cfg := testConfig(clk)
	if err := Register(context.Background(), client, cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Heartbeat(ctx, client, cfg) }()
	defer func() { cancel(); <-done }()
	renewTime := func() time.Time {
		lease, err := client.CoordinationV1().Leases(LeaseNamespace).Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			return time.Time{}
		}
		return lease.Spec.RenewTime.Time
	}
	for i := 0; i <= 3; i++ {
		want := time.Unix(1000+10*int64(i), 0)
		deadline := time.Now().Add(10 * time.Second)
		for !renewTime().Equal(want) {
			if time.Now().After(deadline) {
				t.Fatalf("renewal %d: renew time %v, want %v", i, renewTime(), want)
			}
			time.Sleep(time.Millisecond)
		}
		for !clk.HasWaiters() {
			time.Sleep(time.Millisecond)
		}
		clk.Step(10 * time.Second)
	}
}

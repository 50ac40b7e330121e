// Package node registers the agent's Node object and keeps it alive: Ready condition,
// addresses, pod CIDRs, zone label, and a Lease in kube-node-lease renewed every 10 s.
package node

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// LeaseNamespace holds the node leases.
const LeaseNamespace = "kube-node-lease"

// LeaseDuration is the lease's duration and RenewInterval how often it is renewed.
const (
	LeaseDuration = 40 * time.Second
	RenewInterval = 10 * time.Second
)

// Config describes the node: its InternalIPs, pod CIDRs (the first is spec.podCIDR),
// zone label (empty sets none) and clock (default the real one).
type Config struct {
	Name, Zone    string
	IPs, PodCIDRs []string
	Clock         clock.WithTicker
}

func (c Config) clock() clock.WithTicker {
	if c.Clock == nil {
		return clock.RealClock{}
	}
	return c.Clock
}

// Register creates or updates the Node object (hostname, OS and zone labels, pod CIDRs
// unless already set, which must then match) and writes its status.
func Register(ctx context.Context, client kubernetes.Interface, cfg Config) error {
	nodes := client.CoreV1().Nodes()
	node, err := nodes.Get(ctx, cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err = nodes.Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: cfg.Name}}, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("getting or creating node %s: %w", cfg.Name, err)
	}
	metav1.SetMetaDataLabel(&node.ObjectMeta, v1.LabelHostname, cfg.Name)
	metav1.SetMetaDataLabel(&node.ObjectMeta, v1.LabelOSStable, "linux")
	if cfg.Zone != "" {
		metav1.SetMetaDataLabel(&node.ObjectMeta, v1.LabelTopologyZone, cfg.Zone)
	}
	if len(node.Spec.PodCIDRs) == 0 && len(cfg.PodCIDRs) > 0 {
		node.Spec.PodCIDR, node.Spec.PodCIDRs = cfg.PodCIDRs[0], cfg.PodCIDRs
	} else if len(cfg.PodCIDRs) > 0 && node.Spec.PodCIDR != cfg.PodCIDRs[0] {
		return fmt.Errorf("node %s already has pod CIDRs %v, not %v", cfg.Name, node.Spec.PodCIDRs, cfg.PodCIDRs)
	}
	if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating node %s: %w", cfg.Name, err)
	}
	return writeStatus(ctx, client, node, cfg)
}

// writeStatus sets the node's addresses and its Ready condition, other conditions kept.
func writeStatus(ctx context.Context, client kubernetes.Interface, node *v1.Node, cfg Config) error {
	now := metav1.NewTime(cfg.clock().Now())
	node.Status.Addresses = nil
	for _, ip := range cfg.IPs {
		node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip})
	}
	node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: cfg.Name})
	ready := v1.NodeCondition{
		Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady", Message: "podagent is posting ready status",
		LastHeartbeatTime: now, LastTransitionTime: now,
	}
	conditions := []v1.NodeCondition{}
	for _, c := range node.Status.Conditions {
		if c.Type != v1.NodeReady {
			conditions = append(conditions, c)
		} else if c.Status == v1.ConditionTrue {
			ready.LastTransitionTime = c.LastTransitionTime
		}
	}
	node.Status.Conditions = append(conditions, ready)
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing status of node %s: %w", cfg.Name, err)
	}
	return nil
}

// Heartbeat renews the lease every RenewInterval, and the status every sixth time, until
// ctx ends, logging failures.
func Heartbeat(ctx context.Context, client kubernetes.Interface, cfg Config) {
	ticker := cfg.clock().NewTicker(RenewInterval)
	defer ticker.Stop()
	for beat := 0; ; beat++ {
		if err := RenewLease(ctx, client, cfg); err != nil {
			klog.ErrorS(err, "Renewing node lease", "node", cfg.Name)
		}
		if beat%6 == 5 {
			node, err := client.CoreV1().Nodes().Get(ctx, cfg.Name, metav1.GetOptions{})
			if err == nil {
				err = writeStatus(ctx, client, node, cfg)
			}
			if err != nil {
				klog.ErrorS(err, "Refreshing node status", "node", cfg.Name)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
	}
}

// RenewLease creates the node's lease (owned by the Node object) or renews it.
func RenewLease(ctx context.Context, client kubernetes.Interface, cfg Config) error {
	leases := client.CoordinationV1().Leases(LeaseNamespace)
	lease, err := leases.Get(ctx, cfg.Name, metav1.GetOptions{})
	missing := apierrors.IsNotFound(err)
	if missing {
		lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: cfg.Name, Namespace: LeaseNamespace}}
		if node, err := client.CoreV1().Nodes().Get(ctx, cfg.Name, metav1.GetOptions{}); err == nil {
			lease.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
		}
	} else if err != nil {
		return fmt.Errorf("getting lease of node %s: %w", cfg.Name, err)
	}
	seconds, now := int32(LeaseDuration/time.Second), metav1.NewMicroTime(cfg.clock().Now())
	lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds, lease.Spec.RenewTime = &cfg.Name, &seconds, &now
	if missing {
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
	} else {
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("writing lease of node %s: %w", cfg.Name, err)
	}
	return nil
}

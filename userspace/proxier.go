package userspace

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// Proxier is the userspace proxy mode. It implements proxier.Backend: Core calls Sync from one
// goroutine at a time; Close may be called from any goroutine.
type Proxier struct {
	fwd     *forwarder
	capture capturer
	cancel  context.CancelFunc
	// reportUnsupported logs a service port whose protocol the mode cannot proxy.
	reportUnsupported func(name endpoints.ServicePortName, proto v1.Protocol)

	mu     sync.Mutex
	ports  map[portKey]*portProxy
	tables map[v1.IPFamily]*captureTable
	// captured holds each port's elements in its family's captureTable.
	captured map[portKey]map[captureKey]uint16
	// retired holds removed ports whose connections may still be draining.
	retired map[*portProxy]struct{}
	// unsupported holds the service ports already reported as unsupported.
	unsupported map[endpoints.ServicePortName]bool
	needFull    bool
	closed      bool
}

var _ proxier.Backend = (*Proxier)(nil)

// New returns a userspace proxy for cfg. It touches neither sockets nor the kernel: the first
// Sync (always a full one) opens the listeners and creates the capture tables.
func New(cfg Config) (*Proxier, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := newProxier(cfg, clock.RealClock{}, nil, &nftCapture{netNSFd: cfg.NetNSFd, families: cfg.Families})
	klog.InfoS("Using the userspace proxy", "families", cfg.Families, "nodeIPs", cfg.NodeIPs,
		"listenAddresses", listenAddrs(cfg), "maxConnections", cfg.MaxConnections,
		"maxUDPSessions", cfg.MaxUDPSessions, "dialTimeout", cfg.DialTimeout,
		"udpIdleTimeout", cfg.UDPIdleTimeout, "drainTimeout", cfg.DrainTimeout)
	warnFileLimit(cfg)
	return p, nil
}

// newProxier builds a Proxier from a completed config and its collaborators (op nil: real
// sockets).
func newProxier(cfg Config, clk clock.WithDelayedExecution, op opener, capture capturer) *Proxier {
	ctx, cancel := context.WithCancel(context.Background())
	fwd := &forwarder{cfg: cfg, clock: clk, sockets: sockets{netNSFd: cfg.NetNSFd, dialTimeout: cfg.DialTimeout}, opener: op, ctx: ctx}
	if op == nil {
		fwd.opener = socketOpener{sockets: fwd.sockets}
	}
	fwd.tcpSlots.max = int64(cfg.MaxConnections)
	fwd.udpSlots.max = int64(cfg.MaxUDPSessions)
	p := &Proxier{
		fwd:               fwd,
		capture:           capture,
		cancel:            cancel,
		reportUnsupported: logUnsupported,
		ports:             map[portKey]*portProxy{},
		tables:            map[v1.IPFamily]*captureTable{},
		captured:          map[portKey]map[captureKey]uint16{},
		retired:           map[*portProxy]struct{}{},
		unsupported:       map[endpoints.ServicePortName]bool{},
		needFull:          true,
	}
	for _, f := range cfg.Families {
		p.tables[f] = newCaptureTable(f)
	}
	return p
}

// Sync implements proxier.Backend: it opens, updates and closes the listeners of the service
// ports in req's checkouts (all of req's trackers when full), then commits the capture changes
// of every family in one netlink batch. A port whose listener cannot be opened fails the sync
// (the next one is full and retries it) without holding back the others.
func (p *Proxier) Sync(_ context.Context, req *proxier.SyncRequest) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("syncing the userspace proxy: it is closed")
	}
	for pp := range p.retired {
		if pp.flowCount() == 0 {
			delete(p.retired, pp)
		}
	}
	full := req.Full || p.needFull
	var portErrs error
	if full {
		portErrs = p.syncAll(req)
	} else {
		portErrs = p.syncChanges(req)
	}
	var changes []familyChange
	for _, f := range p.fwd.cfg.Families {
		ch := p.tables[f].pending(full, p.fwd.cfg.NodePortAddresses[f])
		if full || len(ch.add)+len(ch.del) > 0 {
			changes = append(changes, ch)
		}
	}
	if len(changes) > 0 {
		if err := p.capture.Apply(changes); err != nil {
			p.syncFailed()
			return fmt.Errorf("syncing the userspace proxy: %w", errors.Join(err, portErrs))
		}
		for _, ch := range changes {
			p.tables[ch.family].committed(ch)
		}
	}
	if portErrs != nil {
		p.syncFailed()
		return fmt.Errorf("syncing the userspace proxy: %w", portErrs)
	}
	p.needFull = false
	return nil
}

// syncFailed counts a failed sync and asks for a full one next.
func (p *Proxier) syncFailed() {
	p.needFull = true
	for _, f := range p.fwd.cfg.Families {
		p.fwd.cfg.Metrics.UserspaceSyncFailuresTotal.WithLabelValues(string(f)).Inc()
	}
}

// syncChanges applies the checkouts' changes.
func (p *Proxier) syncChanges(req *proxier.SyncRequest) error {
	var errs []error
	for _, co := range req.Checkouts {
		if p.tables[co.Family] == nil {
			continue
		}
		for i := range co.Changes {
			ch := &co.Changes[i]
			key := portKey{family: co.Family, name: ch.Name}
			if ch.Current == nil {
				p.removePort(key)
				continue
			}
			errs = append(errs, p.upsertPort(key, ch.Current, ch.Endpoints, req.Node))
		}
	}
	return errors.Join(errs...)
}

// desiredPort is one service port a full sync wants.
type desiredPort struct {
	key  portKey
	spec *proxier.ServicePort
	eps  []endpoints.Endpoint
}

// syncAll makes the ports match req's trackers: ports they lack are removed, all others
// updated (listeners that exist are kept, so their ports do not change).
func (p *Proxier) syncAll(req *proxier.SyncRequest) error {
	var desired []desiredPort
	for _, t := range req.Trackers {
		family := t.Family()
		if p.tables[family] == nil {
			continue
		}
		t.ForEach(func(sp *proxier.ServicePort, eps []endpoints.Endpoint) {
			desired = append(desired, desiredPort{key: portKey{family: family, name: sp.Name}, spec: sp, eps: eps})
		})
	}
	slices.SortFunc(desired, func(a, b desiredPort) int {
		return cmp.Or(cmp.Compare(a.key.family, b.key.family), cmp.Compare(a.key.name.String(), b.key.name.String()),
			cmp.Compare(a.key.name.Protocol, b.key.name.Protocol))
	})
	wanted := make(map[portKey]bool, len(desired))
	wantedNames := make(map[endpoints.ServicePortName]bool, len(desired))
	for _, d := range desired {
		wanted[d.key], wantedNames[d.key.name] = true, true
	}
	for key := range p.ports {
		if !wanted[key] {
			p.removePort(key)
		}
	}
	for name := range p.unsupported {
		if !wantedNames[name] {
			delete(p.unsupported, name)
		}
	}
	var errs []error
	for _, d := range desired {
		errs = append(errs, p.upsertPort(d.key, d.spec, d.eps, req.Node))
	}
	return errors.Join(errs...)
}

// upsertPort creates or updates one service port and its capture claims.
func (p *Proxier) upsertPort(key portKey, sp *proxier.ServicePort, eps []endpoints.Endpoint, node endpoints.Node) error {
	if p.unsupported[key.name] {
		return nil
	}
	pp := p.ports[key]
	if pp == nil {
		pp = newPortProxy(key, p.fwd)
		p.ports[key] = pp
	}
	if err := pp.update(sp, eps, node); err != nil {
		if errors.Is(err, errUnsupportedProtocol) {
			p.removePort(key)
			p.unsupported[key.name] = true
			p.reportUnsupported(key.name, sp.Protocol)
			return nil
		}
		return err
	}
	keys := pp.captureKeys()
	p.tables[key.family].replace(key, p.captured[key], keys)
	p.captured[key] = keys
	return nil
}

// removePort closes a service port's listeners and drops its claims; its open connections
// close after the drain timeout.
func (p *Proxier) removePort(key portKey) {
	delete(p.unsupported, key.name)
	pp := p.ports[key]
	if pp == nil {
		return
	}
	pp.shutdown(true)
	p.retired[pp] = struct{}{}
	p.tables[key.family].replace(key, p.captured[key], nil)
	delete(p.captured, key)
	delete(p.ports, key)
	for _, f := range p.fwd.cfg.Families {
		if p.ports[portKey{family: f, name: key.name}] != nil {
			return
		}
	}
	deleteServiceSeries(p.fwd.cfg.Metrics, key.name.String())
}

// Close closes every listener and connection (draining ones too) and removes the capture
// tables.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	p.cancel()
	for key, pp := range p.ports {
		pp.shutdown(false)
		delete(p.ports, key)
	}
	for pp := range p.retired {
		pp.shutdown(false)
		delete(p.retired, pp)
	}
	if err := p.capture.Remove(); err != nil {
		return fmt.Errorf("closing the userspace proxy: %w", err)
	}
	return nil
}

// Cleanup removes the userspace mode's capture tables of both families from the network
// namespace netNSFd (0: the current one), as `--cleanup` does; absent tables are fine.
func Cleanup(netNSFd int) error {
	return removeTables(netNSFd, []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol})
}

// listenAddrs returns where each family's listeners bind.
func listenAddrs(cfg Config) []string {
	var out []string
	for _, f := range cfg.Families {
		out = append(out, cfg.listenAddr(f).String())
	}
	return out
}

// logUnsupported is the default reportUnsupported.
func logUnsupported(name endpoints.ServicePortName, proto v1.Protocol) {
	klog.InfoS("Skipping a service port: the userspace proxy does not support its protocol",
		"servicePort", name, "protocol", proto)
}

// warnFileLimit logs when the open-file limit is below what the connection limits may need:
// a TCP connection holds two sockets and, while copying, up to two splice pipes of two
// descriptors; a UDP session holds one socket.
func warnFileLimit(cfg Config) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	need := uint64(6*cfg.MaxConnections + cfg.MaxUDPSessions + 1024)
	if lim.Cur < need {
		klog.InfoS("The open-file limit may be too low for the userspace proxy's connection limits",
			"limit", lim.Cur, "mayNeed", need)
	}
}

package app

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// The flag value types below reproduce the pflag type names that upstream
// kube-proxy reports ("ip", "ipport", "ProxyMode", "LocalMode", "version"), so
// that --help output and the flag-compatibility test line up with upstream.

// ipFlag is a pflag.Value holding a textual IP address. Like upstream, an
// empty value leaves the target unchanged.
type ipFlag struct{ target *string }

var _ pflag.Value = ipFlag{}

// Set parses s as an IP address (leading zeros allowed, as upstream).
func (f ipFlag) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) == nil {
		return fmt.Errorf("%q is not a valid IP address", s)
	}
	*f.target = s
	return nil
}

// String returns the current value.
func (f ipFlag) String() string { return *f.target }

// Type returns the upstream type name.
func (f ipFlag) Type() string { return "ip" }

// ipPortFlag is a pflag.Value holding "IP" or "IP:port". Like upstream, an
// empty value leaves the target unchanged and a bare IP gets its port later.
type ipPortFlag struct{ target *string }

var _ pflag.Value = ipPortFlag{}

// Set parses s as an IP or an IP:port pair.
func (f ipPortFlag) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) != nil {
		*f.target = s
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not in a valid format (ip or ip:port): %w", s, err)
	}
	if netutils.ParseIPSloppy(host) == nil {
		return fmt.Errorf("%q is not a valid IP address", host)
	}
	if _, err := netutils.ParsePort(port, true); err != nil {
		return fmt.Errorf("%q is not a valid port number", port)
	}
	*f.target = s
	return nil
}

// String returns the current value.
func (f ipPortFlag) String() string { return *f.target }

// Type returns the upstream type name.
func (f ipPortFlag) Type() string { return "ipport" }

// proxyModeFlag binds --proxy-mode (and its alias --mode) to the config's
// mode field. Values are checked by validation, not here, as upstream.
type proxyModeFlag struct{ target *v1alpha1.ProxyMode }

var _ pflag.Value = proxyModeFlag{}

// Set stores s unchanged.
func (f proxyModeFlag) Set(s string) error {
	*f.target = v1alpha1.ProxyMode(s)
	return nil
}

// String returns the current value.
func (f proxyModeFlag) String() string { return string(*f.target) }

// Type returns the upstream type name.
func (f proxyModeFlag) Type() string { return "ProxyMode" }

// localModeFlag binds --detect-local-mode to the config's detectLocalMode.
type localModeFlag struct{ target *v1alpha1.LocalMode }

var _ pflag.Value = localModeFlag{}

// Set stores s unchanged.
func (f localModeFlag) Set(s string) error {
	*f.target = v1alpha1.LocalMode(s)
	return nil
}

// String returns the current value.
func (f localModeFlag) String() string { return string(*f.target) }

// Type returns the upstream type name.
func (f localModeFlag) Type() string { return "LocalMode" }

// Values of --version.
const (
	versionFlagFalse = "false"
	versionFlagTrue  = "true"
	versionFlagRaw   = "raw"
)

// versionFlag implements --version like component-base's verflag: a boolean
// flag that also accepts "raw" and "vX.Y.Z" (which overrides the reported
// version).
type versionFlag struct{ target *string }

var _ pflag.Value = versionFlag{}

// IsBoolFlag lets "--version" be given without a value.
func (f versionFlag) IsBoolFlag() bool { return true }

// Set accepts true/false (any strconv.ParseBool spelling), "raw" or "vX.Y.Z".
func (f versionFlag) Set(s string) error {
	switch {
	case s == versionFlagRaw:
		*f.target = versionFlagRaw
		return nil
	case strings.HasPrefix(s, "v"):
		if !validVersionString(s) {
			return fmt.Errorf("%q is not a valid version (want vMAJOR.MINOR.PATCH)", s)
		}
		*f.target = s
		return nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not true, false, raw or vX.Y.Z", s)
	}
	if b {
		*f.target = versionFlagTrue
	} else {
		*f.target = versionFlagFalse
	}
	return nil
}

// String returns the current value.
func (f versionFlag) String() string { return *f.target }

// Type returns the upstream type name.
func (f versionFlag) Type() string { return "version" }

// validVersionString reports whether s looks like "v1.2.3" with an optional
// "-suffix" or "+suffix".
func validVersionString(s string) bool {
	core := strings.TrimPrefix(s, "v")
	if i := strings.IndexAny(core, "-+"); i >= 0 {
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			return false
		}
	}
	return true
}

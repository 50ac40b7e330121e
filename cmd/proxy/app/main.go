package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/klog/v2"
)

// commandName is the name the usage text and errors use.
const commandName = "kube-proxy"

// longDescription introduces the --help output.
const longDescription = `nodeproxy is a drop-in replacement for the Kubernetes network proxy (kube-proxy).
It runs on each node and programs the Services and EndpointSlices defined in the
Kubernetes API (or read from files with --source=file:DIR) into iptables or
nftables rules, or forwards them in userspace.`

// Main runs the proxy command line: it parses args, handles --help and
// --version, completes and validates the configuration, writes it out for
// --write-config-to, and otherwise calls run with the resolved Config
// (`trace` as the first argument runs the trace subcommand instead). Any
// error is printed to stderr as exactly one line "proxy: <error>" and yields
// exit code 1; success yields 0.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, run func(context.Context, *Config) error) int {
	if len(args) > 0 && args[0] == "trace" {
		return runTrace(ctx, args[1:], stdout, stderr)
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "proxy: %s\n", oneLine(err.Error()))
		return 1
	}

	opts := NewOptions()
	fs, help := newFlagSet(opts)
	var parseOutput bytes.Buffer
	fs.SetOutput(&parseOutput)
	err := fs.Parse(args)
	if *help || errors.Is(err, pflag.ErrHelp) {
		printUsage(stdout, fs)
		return 0
	}
	if err != nil {
		return fail(fmt.Errorf("parsing flags: %w", err))
	}
	// What pflag printed during a successful parse are deprecation warnings.
	_, _ = stderr.Write(parseOutput.Bytes())
	if extra := nonEmptyArgs(fs.Args()); len(extra) > 0 {
		return fail(fmt.Errorf("%q does not take any arguments, got %q", commandName, extra))
	}

	switch opts.VersionFlag {
	case versionFlagTrue:
		fmt.Fprintf(stdout, "Kubernetes %s\n", Version)
		return 0
	case versionFlagRaw:
		fmt.Fprintf(stdout, "%#v\n", rawVersionInfo())
		return 0
	}

	if err := opts.Complete(fs); err != nil {
		return fail(err)
	}
	if err := opts.Validate(); err != nil {
		return fail(err)
	}
	cfg := opts.Config()
	if err := applyLogging(&cfg.KubeProxyConfiguration.Logging, stdout); err != nil {
		return fail(err)
	}
	logFlags(fs)

	if opts.WriteConfigTo != "" {
		if err := writeConfigFile(opts.WriteConfigTo, cfg.KubeProxyConfiguration); err != nil {
			return fail(err)
		}
		return 0
	}
	if err := run(ctx, cfg); err != nil {
		return fail(err)
	}
	return 0
}

// newFlagSet returns the flag set of the command: opts' flags plus -h/--help
// (as cobra adds it upstream), upstream's word-separator normalisation
// ("--iptables_sync_period" works), errors returned instead of exiting. The
// returned bool pointer is the --help value.
func newFlagSet(opts *Options) (*pflag.FlagSet, *bool) {
	fs := pflag.NewFlagSet(commandName, pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	opts.AddFlags(fs)
	help := fs.BoolP("help", "h", false, "help for "+commandName)
	fs.Usage = func() {} // Main prints the usage itself, on stdout.
	return fs, help
}

// printUsage writes the --help text.
func printUsage(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "%s\n\nUsage:\n  %s [flags]\n\nFlags:\n%s", longDescription, commandName, fs.FlagUsages())
}

// nonEmptyArgs returns the non-empty positional arguments (upstream ignores
// empty ones).
func nonEmptyArgs(args []string) []string {
	var out []string
	for _, a := range args {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

// logFlags logs every flag's value at verbosity 1, like upstream's
// cliflag.PrintFlags.
func logFlags(fs *pflag.FlagSet) {
	if !klog.V(1).Enabled() {
		return
	}
	fs.VisitAll(func(f *pflag.Flag) {
		klog.V(1).InfoS(fmt.Sprintf("FLAG: --%s=%q", f.Name, f.Value.String()))
	})
}

// versionInfo is what --version=raw prints, shaped like component-base's
// version.Info.
type versionInfo struct {
	Major      string
	Minor      string
	GitVersion string
	GoVersion  string
	Compiler   string
	Platform   string
}

// rawVersionInfo describes this binary.
func rawVersionInfo() versionInfo {
	major, minor, _ := parseMajorMinor(Version)
	return versionInfo{
		Major:      fmt.Sprint(major),
		Minor:      fmt.Sprint(minor),
		GitVersion: Version,
		GoVersion:  runtime.Version(),
		Compiler:   runtime.Compiler,
		Platform:   fmt.Sprintf("%s/%s", runtime.GOOS, runtime.GOARCH),
	}
}

package app

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
)

// Logging formats nodeproxy supports.
const (
	logFormatText = "text"
	logFormatJSON = "json"
)

// addLoggingFlags registers component-base's logging flags (same names, types
// and defaults as upstream, including the json ones that upstream gets from
// its json format registration) bound to c.
func addLoggingFlags(fs *pflag.FlagSet, c *logsapi.LoggingConfiguration) {
	fs.StringVar(&c.Format, "logging-format", c.Format, "Sets the log format. Permitted formats: \"json\", \"text\".")
	fs.DurationVar(&c.FlushFrequency.Duration.Duration, logsapi.LogFlushFreqFlagName, c.FlushFrequency.Duration.Duration, "Maximum number of seconds between log flushes")
	fs.VarP(logsapi.VerbosityLevelPflag(&c.Verbosity), "v", "v", "number for the log level verbosity")
	fs.Var(logsapi.VModuleConfigurationPflag(&c.VModule), "vmodule", "comma-separated list of pattern=N settings for file-filtered logging (only works for text log format)")
	fs.BoolVar(&c.Options.Text.SplitStream, "log-text-split-stream", false, "[Alpha] In text format, write error messages to stderr and info messages to stdout. The default is to write a single stream to stdout. Enable the LoggingAlphaOptions feature gate to use this.")
	fs.Var(&c.Options.Text.InfoBufferSize, "log-text-info-buffer-size", "[Alpha] In text format with split output streams, the info messages can be buffered for a while to increase performance. The default value of zero bytes disables buffering. The size can be specified as number of bytes (512), multiples of 1000 (1K), multiples of 1024 (2Ki), or powers of those (3M, 4G, 5Mi, 6Gi). Enable the LoggingAlphaOptions feature gate to use this.")
	fs.BoolVar(&c.Options.JSON.SplitStream, "log-json-split-stream", false, "[Alpha] In JSON format, write error messages to stderr and info messages to stdout. The default is to write a single stream to stdout. Enable the LoggingAlphaOptions feature gate to use this.")
	fs.Var(&c.Options.JSON.InfoBufferSize, "log-json-info-buffer-size", "[Alpha] In JSON format with split output streams, the info messages can be buffered for a while to increase performance. The default value of zero bytes disables buffering. The size can be specified as number of bytes (512), multiples of 1000 (1K), multiples of 1024 (2Ki), or powers of those (3M, 4G, 5Mi, 6Gi). Enable the LoggingAlphaOptions feature gate to use this.")
}

// copyLoggingFlags applies the logging flags that were set on the command line
// to a configuration loaded from a file, so that "--config f -v=5" works: the
// command line wins, and vmodule entries from the flags come first.
func copyLoggingFlags(from *pflag.FlagSet, to *logsapi.LoggingConfiguration) error {
	var shadow pflag.FlagSet
	addLoggingFlags(&shadow, to)
	fileVModule := to.VModule
	to.VModule = nil
	var firstErr error
	shadow.VisitAll(func(f *pflag.Flag) {
		src := from.Lookup(f.Name)
		if firstErr != nil || src == nil || !src.Changed {
			return
		}
		if err := f.Value.Set(src.Value.String()); err != nil {
			firstErr = fmt.Errorf("copying flag --%s into the configuration: %w", f.Name, err)
		}
	})
	to.VModule = append(to.VModule, fileVModule...)
	return firstErr
}

// applyLogging configures klog from a validated logging configuration:
// verbosity, vmodule, flush frequency and, for the json format, a JSON
// slog-backed logger writing to jsonOut.
func applyLogging(c *logsapi.LoggingConfiguration, jsonOut io.Writer) error {
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	if err := klogFlags.Set("v", strconv.FormatUint(uint64(c.Verbosity), 10)); err != nil {
		return fmt.Errorf("setting klog verbosity: %w", err)
	}
	if err := klogFlags.Set("vmodule", logsapi.VModuleConfigurationPflag(&c.VModule).String()); err != nil {
		return fmt.Errorf("setting klog vmodule: %w", err)
	}
	if c.Format == logFormatJSON {
		handler := slog.NewJSONHandler(jsonOut, &slog.HandlerOptions{Level: slog.Level(math.MinInt32)})
		klog.SetSlogLogger(slog.New(handler))
	}
	klog.StartFlushDaemon(c.FlushFrequency.Duration.Duration)
	return nil
}

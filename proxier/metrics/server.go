package metrics

import (
	"fmt"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the Prometheus text exposition of everything g gathers.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}

// MetricsMux returns the metrics server's routes, as upstream kube-proxy's serveMetrics:
//
//   - /metrics: the Prometheus exposition of g;
//   - /healthz and /healthz/ping: "ok" (a liveness check of the metrics server itself;
//     /healthz?verbose lists the ping check as upstream does);
//   - /proxyMode: the proxy mode as plain text;
//   - /debug/pprof/... when enableProfiling is set.
//
// /metrics/slis, /configz, /flagz, /statusz and /debug/flags/v are not served.
func MetricsMux(g prometheus.Gatherer, mode string, enableProfiling bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(g))
	mux.HandleFunc("/healthz", serveHealthz)
	mux.HandleFunc("/healthz/ping", func(w http.ResponseWriter, _ *http.Request) {
		writePlain(w, "ok")
	})
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		writePlain(w, mode)
	})
	if enableProfiling {
		mux.HandleFunc("/debug/pprof", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
		})
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// serveHealthz answers like the apiserver healthz handler with only the ping check installed.
func serveHealthz(w http.ResponseWriter, r *http.Request) {
	if _, verbose := r.URL.Query()["verbose"]; verbose {
		writePlain(w, "[+]ping ok\nhealthz check passed\n")
		return
	}
	writePlain(w, "ok")
}

func writePlain(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = fmt.Fprint(w, body)
}

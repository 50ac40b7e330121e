# A menu over hack/*.sh: each target is one script.
.PHONY: build run test bench lint clean

build: ## build _output/bin/proxy (and the pod agent)
	hack/build.sh

run: ## bring up a local sandbox node running the proxy
	hack/run.sh

test: ## install test dependencies and run every test with -race
	hack/test.sh

bench: ## benchmarks (see bench/)
	hack/bench.sh

lint: ## gofmt and go vet
	hack/lint.sh

clean: ## remove build output and this host's proxy rules
	hack/clean.sh

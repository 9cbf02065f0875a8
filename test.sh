#!/usr/bin/env bash
# test.sh runs tether's whole test suite on a Debian machine with Go. It
# first installs what the suite needs and the machine lacks (redis-server,
# redis-cli, Chromium and its driver, HAProxy and nginx for the load
# balancer tests), then checks formatting and vet, runs
# every test with the race detector (fuzz seed corpora included), and runs
# the allocation tests, which only mean something without -race.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Debian puts these two in /usr/sbin, which is not on every user's PATH.
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
if ((${#need[@]})); then
	echo "test.sh: installing ${need[*]}"
	sudo=""
	[[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "test.sh: gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' ':!third_party/' 2>/dev/null || find . -path ./third_party -prune -o -name '*.go' -print))
if [[ -n $unformatted ]]; then
	echo "not gofmt-clean:"
	echo "$unformatted"
	exit 1
fi
go vet ./...

echo "test.sh: go test -race"
go test -race -count=1 -timeout 12m ./...

echo "test.sh: the nbio copy's patch tests (third_party/nbio is its own module)"
(cd third_party/nbio && go test -race -count=100 -run 'TestStaleEventOnReusedFd' . && go test -race -count=3 -run 'TestStopBeforePollersRun|TestStopWhileAccepting|TestResetAfterDataIsNotEOF|TestAcceptTCP|TestSetNodelay|TestStartFailureClosesDescriptors|TestAcceptedConnAddrs' .)

echo "test.sh: allocation tests (without -race)"
go test -count=1 -run 'Alloc' ./...

echo "test.sh: the 1M simulation's checks at 20,000 connections (pings sent, nothing allocated while idle)"
TETHER_MILLION=20000 go test -count=1 -run 'TestMillionConnections' ./server/

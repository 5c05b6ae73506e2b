#!/usr/bin/env bash
# test/fuzz.sh FUZZER PACKAGE TIME: go test -fuzz for TIME (make fuzz).
#
# Go 1.26's fuzz coordinator can fail a run that found nothing with a bare
# "context deadline exceeded" at the -fuzztime boundary, when a worker is
# still running an input as the deadline passes (go.dev/issue/75804, fixed
# in Go 1.27). Only that failure, with no failing input written, is run
# once more; any finding fails at once (its input is in testdata/fuzz).
set -uo pipefail
fuzzer=$1 pkg=$2 time=$3
out=$(mktemp)
trap 'rm -f "$out"' EXIT

fuzz() {
	"${GO:-go}" test -run '^$' -fuzz "^${fuzzer}\$" -fuzztime "$time" "$pkg" 2>&1 | tee "$out"
}

fuzz && exit 0
if grep -q 'Failing input written to' "$out" || [ "$(grep -c -- '--- FAIL' "$out")" != 1 ] ||
	! grep -qx '    context deadline exceeded' "$out"; then
	exit 1
fi
echo "fuzz.sh: $fuzzer ended on Go's coordinator deadline race (go.dev/issue/75804), no failing input: once more"
fuzz

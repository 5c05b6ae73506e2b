package bpf

// The objects are generated for little-endian hosts (bpfel) and committed, so
// building kmeshd needs no clang. `make generate` reruns this; CI fails when
// the committed output differs from a fresh run.
//go:generate go tool bpf2go -tags linux -target bpfel -type km_family -type km_lb_mode -type km_backend_flag Kmesh ../../bpf/connect.c -- -I../../bpf/include -mcpu=v3 -g -O2 -Wall -Werror

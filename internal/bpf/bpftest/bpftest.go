// Package bpftest runs the C tests of the eBPF decision logic (bpf/tests)
// through BPF_PROG_TEST_RUN. Each test is a syscall program named test_*
// that returns 0 on success or the source line of the failed check.
package bpftest

//go:generate go tool bpf2go -tags linux -target bpfel lbTest ../../../bpf/tests/lb_test.c -- -I../../../bpf/include -mcpu=v3 -g -O2 -Wall -Werror
//go:generate go tool bpf2go -tags linux -target bpfel -type authz_test_ctx authzTest ../../../bpf/tests/authz_test.c -- -I../../../bpf/include -mcpu=v3 -g -O2 -Wall -Werror

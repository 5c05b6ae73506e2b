package bpf

// The objects are generated for little-endian hosts (bpfel) and committed, so
// building kmeshd needs no clang. `make generate` reruns this; CI fails when
// the committed output differs from a fresh run. The kmesh_upgrade_test
// build tag selects a variant whose programs differ, for upgrade tests.
//go:generate go tool bpf2go -tags linux,!kmesh_upgrade_test -target bpfel -type km_family -type km_lb_mode -type km_lb_flag -type km_lb_limit -type km_lb_how -type km_backend_flag -type km_conn_event_type -type km_conn_direction -type conn_event -type conn_row -type km_authz_action -type km_authz_verdict -type km_authz_side -type km_authz_match_flag -type km_authz_kind -type km_tunnel_const -type km_tunnel_proto -type lb_outcome Kmesh ../../bpf/kmesh.c -- -I../../bpf/include -mcpu=v3 -g -O2 -Wall -Werror
//go:generate go tool bpf2go -tags linux,kmesh_upgrade_test -output-stem kmesh_upgrade -target bpfel -type km_family -type km_lb_mode -type km_lb_flag -type km_lb_limit -type km_lb_how -type km_backend_flag -type km_conn_event_type -type km_conn_direction -type conn_event -type conn_row -type km_authz_action -type km_authz_verdict -type km_authz_side -type km_authz_match_flag -type km_authz_kind -type km_tunnel_const -type km_tunnel_proto -type lb_outcome Kmesh ../../bpf/kmesh.c -- -I../../bpf/include -mcpu=v3 -g -O2 -Wall -Werror -DKM_TEST_VARIANT

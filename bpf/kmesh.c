// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The one object kmeshd loads. Each attach point has its own file; they are
 * compiled together so every program shares the same maps.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "lb.h"
#include "authz.h"
#include "sock.h"
#include "tunnel.h"

#include "connect.c"
#include "ingress.c"
#include "skmsg.c"
#include "sockops.c"

/* Keep the enums in the BTF, so bpf2go generates their Go twins: the struct
 * fields that hold them are plain integers of a fixed size. */
const enum km_family *unused_family __attribute__((unused));
const enum km_lb_mode *unused_lb_mode __attribute__((unused));
const enum km_backend_flag *unused_backend_flag __attribute__((unused));
const enum km_lb_flag *unused_lb_flag __attribute__((unused));
const enum km_lb_limit *unused_lb_limit __attribute__((unused));
const enum km_lb_how *unused_lb_how __attribute__((unused));
const enum km_conn_event_type *unused_conn_event_type __attribute__((unused));
const enum km_conn_direction *unused_conn_direction __attribute__((unused));
const struct conn_event *unused_conn_event __attribute__((unused));
const struct conn_row *unused_conn_row __attribute__((unused));
const enum km_authz_action *unused_authz_action __attribute__((unused));
const enum km_authz_verdict *unused_authz_verdict __attribute__((unused));
const enum km_authz_side *unused_authz_side __attribute__((unused));
const enum km_authz_match_flag *unused_authz_match_flag __attribute__((unused));
const enum km_authz_kind *unused_authz_kind __attribute__((unused));
const enum km_tunnel_const *unused_tunnel_const __attribute__((unused));
const enum km_tunnel_proto *unused_tunnel_proto __attribute__((unused));
const struct lb_outcome *unused_lb_outcome __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";

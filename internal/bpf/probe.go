package bpf

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// Features are the kernel features the data plane uses, probed at load time
// (never at build time), so one build runs on every kernel from 5.10 with BTF.
// Required ones fail the load with a message naming them; optional ones
// turn a part off with a warning.
type Features struct {
	// SetRetval lets a connect to a service with no endpoint fail with
	// ECONNREFUSED (bpf_set_retval, 5.18); without it the error is EPERM.
	SetRetval bool
	// GetPeerName hides the chosen endpoint from getpeername() (5.8).
	GetPeerName bool
	// Telemetry records connections from sockops through a ring buffer
	// (bpf_get_netns_cookie in sockops, 5.15).
	Telemetry bool
	// SkMsg redirects messages between local sockets (sockhash, sk_msg
	// links and socket storage in sk_msg, 5.10; the socket's network
	// namespace cookie in sk_msg, 5.15, keeps loopback connections of two
	// pods apart; bpf_probe_read_kernel in sk_msg, which a kernel locked
	// down for confidentiality refuses, bounds what a peer holds unread).
	SkMsg bool
	// Authz enforces authorization policies: bpf_loop (5.17) walks them,
	// cgroup_skb programs check SYNs, LPM tries hold address blocks.
	Authz bool
}

// ErrMissingFeature means the kernel lacks a feature Kmesh cannot run without.
var ErrMissingFeature = errors.New("kernel lacks a required eBPF feature")

func probe() (Features, error) {
	required := []struct {
		what string
		err  error
	}{
		{"cgroup sock_addr programs (cgroup/connect4, 4.17)", features.HaveProgramType(ebpf.CGroupSockAddr)},
		{"socket storage maps (BPF_MAP_TYPE_SK_STORAGE, 5.2)", features.HaveMapType(ebpf.SkStorage)},
		{"bpf_get_netns_cookie in cgroup sock_addr programs (5.7)", features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)},
	}
	for _, r := range required {
		if errors.Is(r.err, ebpf.ErrNotSupported) {
			return Features{}, fmt.Errorf("%w: %s", ErrMissingFeature, r.what)
		}
		if r.err != nil {
			return Features{}, fmt.Errorf("probe %s: %w", r.what, r.err)
		}
	}
	var f Features
	f.SetRetval = features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) == nil
	// No probe exists for attach types; getpeername hooks came in 5.8 with
	// the helpers below, which serve as the marker.
	f.GetPeerName = features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie) == nil &&
		features.HaveMapType(ebpf.RingBuf) == nil
	f.SkMsg = features.HaveMapType(ebpf.SockHash) == nil &&
		features.HaveProgramHelper(ebpf.SkMsg, asm.FnMsgRedirectHash) == nil &&
		features.HaveProgramHelper(ebpf.SkMsg, asm.FnSkStorageGet) == nil &&
		features.HaveProgramHelper(ebpf.SkMsg, asm.FnGetNetnsCookie) == nil &&
		features.HaveProgramHelper(ebpf.SkMsg, asm.FnProbeReadKernel) == nil
	f.Authz = features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnLoop) == nil &&
		features.HaveProgramHelper(ebpf.CGroupSKB, asm.FnLoop) == nil &&
		features.HaveMapType(ebpf.LPMTrie) == nil
	f.Telemetry = features.HaveMapType(ebpf.RingBuf) == nil &&
		features.HaveProgramHelper(ebpf.SockOps, asm.FnGetNetnsCookie) == nil &&
		features.HaveProgramHelper(ebpf.SockOps, asm.FnSkStorageGet) == nil
	return f, nil
}

// configure sets the load-time constants that switch optional code on, and
// says what is off.
func (f Features) configure(s *ebpf.CollectionSpec, opts Options, log *slog.Logger) error {
	if err := s.Variables["km_have_set_retval"].Set(f.SetRetval); err != nil {
		return fmt.Errorf("set km_have_set_retval: %w", err)
	}
	if !f.SetRetval {
		log.Warn("kernel lacks bpf_set_retval for connect hooks (5.18): a connect to a service with no endpoint fails with EPERM instead of ECONNREFUSED")
	}
	if !f.GetPeerName {
		delete(s.Programs, KmeshProgKmGetpeername4)
		delete(s.Programs, KmeshProgKmGetpeername6)
		log.Warn("kernel lacks cgroup getpeername hooks (5.8): applications see the endpoint's address as their peer, not the service's")
	}
	if err := s.Variables["km_authz"].Set(f.Authz); err != nil {
		return fmt.Errorf("set km_authz: %w", err)
	}
	if !f.Authz {
		delete(s.Programs, KmeshProgKmIngress)
		log.Error("kernel lacks bpf_loop in cgroup programs (5.17): authorization policies are NOT enforced; kmeshd is not ready while the mesh has any")
	}
	accelerate := opts.Accelerate && f.SkMsg && f.Telemetry
	if err := s.Variables["km_accelerate"].Set(accelerate); err != nil {
		return fmt.Errorf("set km_accelerate: %w", err)
	}
	if !accelerate {
		delete(s.Programs, KmeshProgKmSkmsg)
	}
	if opts.Accelerate && !accelerate {
		log.Warn("kernel lacks sk_msg redirects, their socket storage (5.10), netns cookies (5.15) or bpf_probe_read_kernel (refused under lockdown=confidentiality; without it a receiver's unread bytes cannot be bounded): same-node acceleration is off")
	}
	if err := s.Variables["km_telemetry"].Set(opts.Telemetry && f.Telemetry); err != nil {
		return fmt.Errorf("set km_telemetry: %w", err)
	}
	if !f.Telemetry {
		delete(s.Programs, KmeshProgKmSockops)
		// The tunnel that runs it needs sockops (tunnel_connecting).
		delete(s.Programs, KmeshProgKmLbOutcome)
		if opts.Telemetry {
			log.Warn("kernel lacks sockops netns cookies or ring buffers (5.15): no connection metrics or access logs")
		}
	}
	// Without telemetry or acceleration sockops still serves outlier
	// detection (connect outcomes of services that ask for it).
	return nil
}

// Package hbone carries TCP connections over HBONE, Istio ambient's tunnel
// protocol: one HTTP/2 CONNECT stream per connection, over mutual TLS 1.3
// (ALPN h2, no SNI) to port 15008 of the destination pod.
//
// A [Dialer] opens streams on pooled HTTP/2 connections, one pool per
// (source identity, destination identities, destination address, source
// address) as ztunnel pools them, never shared across identities. It
// presents the source workload's certificate and accepts the server only if
// one of its SPIFFE URI SANs is an expected identity. Any answer but 200 is
// an error ([StatusError]); the caller resets the application's socket.
//
// A [Server] terminates HBONE for one identity: it requires a client
// certificate that chains to the roots and belongs to the trust domain,
// hands the verified peer principal and the authority to its Connect hook
// (authorization and the upstream dial), and answers 200 only after the
// hook returned an upstream connection; otherwise 400, 401 or 503.
//
// The wire format follows ztunnel (src/proxy/outbound.rs, inbound.rs,
// pool.rs): stream windows 4 MiB, connection windows 16 MiB, frames up to
// 1 MiB, at most 100 streams per client connection (the server allows 200),
// idle client connections closed after 5 minutes.
//
// The HTTP/2 connection loop is this package's own (h2conn.go,
// h2stream.go), on x/net/http2's Framer and hpack: CONNECT streams need
// neither requests nor responses with bodies, and x/net's client and server
// hand every frame between three or four goroutines, which cost more than
// the crypto. Here one reader goroutine per connection hands DATA to its
// stream, writing it straight to the destination socket when that socket
// takes it without blocking; writers frame and flush their own bytes under
// one lock, so a stream's bytes leave from the goroutine that read them
// (after yielding once, so that a burst of streams shares a flush). The
// sockets are read and written with raw system calls (internal/rawtcp);
// the reader of a TLS connection runs in rawtcp.ReadLoop, so that the read
// that empties the socket is its last before it parks (h2read.go).
package hbone

// Package waypoint is kmesh-waypoint's L7 engine: it takes connections
// addressed to services that use a waypoint (with the original destination
// VIP:port and the client's identity), and proxies their HTTP/1.1, h2c and
// gRPC requests by the Gateway API routes attached to those services
// (GAMMA), with Istio's fault injection, retry defaults and L7
// authorization. TCP ports are forwarded as L4.
//
// The engine does not know how connections reach it: a plaintext listener
// ([Proxy.ServeListener]) and the HBONE server both hand it connections with
// [Proxy.ServeConn]. Its configuration is a [model.Mesh] and the key of the
// Gateway it serves; [Proxy.Update] compiles a new mesh and swaps it in
// whole, keeping the previous one when the new one is refused.
package waypoint

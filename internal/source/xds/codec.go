package xds

import (
	"unicode/utf8"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// responseCodec is gRPC's proto codec, except that it reads a delta
// response of plain resources (name, version, Any) itself: a first state
// of 100,000 resources is one message, and proto.Unmarshal makes six
// objects per resource and copies each payload out of a buffer that is
// itself a copy of the received frames. Here the resources and their Anys
// come from two arrays, the payloads are slices of one copy of the
// message, and a type URL or version that repeats the previous one is not
// made again. Anything else (other fields, malformed input) goes to
// proto.Unmarshal, which decides; FuzzDecodeDeltaResponse checks that the
// two read the same.
type responseCodec struct{ encoding.CodecV2 }

// callCodec is the stream's call option.
func callCodec() grpc.CallOption {
	return grpc.ForceCodecV2(responseCodec{encoding.GetCodecV2("proto")})
}

func (c responseCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*discovery.DeltaDiscoveryResponse)
	if !ok || data.Len() < 64<<10 {
		return c.CodecV2.Unmarshal(data, v)
	}
	// The payloads alias b, so it is a copy owned here, not a pooled
	// buffer: it lives as long as the response's resources.
	b := data.Materialize()
	if decodeDeltaResponse(b, r) {
		return nil
	}
	return proto.Unmarshal(b, r)
}

// decodeDeltaResponse reads b into the empty r; false leaves it to
// proto.Unmarshal.
func decodeDeltaResponse(b []byte, r *discovery.DeltaDiscoveryResponse) bool {
	n := 0
	if !fields(b, func(f field) bool {
		if f.num == 2 && f.typ == protowire.BytesType {
			n++
		}
		return true
	}) {
		return false
	}
	res, anys := make([]discovery.Resource, n), make([]anypb.Any, n)
	r.Resources = make([]*discovery.Resource, 0, n)
	var s strs
	ok := fields(b, func(f field) bool {
		if f.typ != protowire.BytesType {
			return false
		}
		switch f.num {
		case 1:
			return set(&r.SystemVersionInfo, &s.other, f.b)
		case 4:
			return set(&r.TypeUrl, &s.other, f.b)
		case 5:
			return set(&r.Nonce, &s.other, f.b)
		case 6:
			var name string
			if !set(&name, &s.other, f.b) {
				return false
			}
			r.RemovedResources = append(r.RemovedResources, name)
			return true
		case 2:
			i := len(r.Resources)
			if !decodeResource(f.b, &res[i], &anys[i], &s) {
				return false
			}
			r.Resources = append(r.Resources, &res[i])
			return true
		}
		return false
	})
	if !ok {
		proto.Reset(r)
	}
	return ok
}

// decodeResource reads a Resource of a name, a version and an Any.
func decodeResource(b []byte, r *discovery.Resource, a *anypb.Any, s *strs) bool {
	return fields(b, func(f field) bool {
		if f.typ != protowire.BytesType {
			return false
		}
		switch f.num {
		case 1:
			return set(&r.Version, &s.version, f.b)
		case 3:
			if !utf8.Valid(f.b) {
				return false
			}
			r.Name = string(f.b)
			return true
		case 2:
			if r.Resource != nil {
				return false // merged: left to proto.Unmarshal
			}
			r.Resource = a
			return fields(f.b, func(f field) bool {
				if f.typ != protowire.BytesType {
					return false
				}
				switch f.num {
				case 1:
					return set(&a.TypeUrl, &s.typeURL, f.b)
				case 2:
					a.Value = nil // as proto.Unmarshal leaves an empty one
					if len(f.b) > 0 {
						a.Value = f.b
					}
					return true
				}
				return false
			})
		}
		return false
	})
}

// strs makes the strings of a response, reusing the last of each kind:
// type URLs and versions repeat from one resource to the next.
type strs struct{ typeURL, version, other string }

// set sets *dst to b, a proto3 string (UTF-8), reusing *last.
func set(dst, last *string, b []byte) bool {
	if string(b) != *last {
		if !utf8.Valid(b) {
			return false
		}
		*last = string(b)
	}
	*dst = *last
	return true
}

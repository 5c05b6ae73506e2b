// Command kmesh-echo is the test and demo application of the Kmesh test bed.
//
//	kmesh-echo serve --name NAME [--listen ADDR]...
//	kmesh-echo get --url URL [--count N] [--interval D] [--keepalive] [--timeout D] [--method M] [--header K:V]...
//	               [--host H] [--no-redirect] [--print-headers] [--print-body]
//	kmesh-echo tcp-serve [--listen ADDR] [--reply N]
//	kmesh-echo tcp-send --addr ADDR --bytes N [--count C] [--hold D [--write-first]]
//	kmesh-echo grpc-serve [--listen ADDR] [--flip D] [--name NAME]
//	kmesh-echo grpc-check --addr HOST:PORT [--watch N] [--count N] [--metadata K:V]...
//
// serve answers every HTTP request with its name, in the body and in X-Pod,
// and with the connection's two ends as it sees them (X-Local-Addr,
// X-Remote-Addr). It prints "listening ADDR" once each listener is ready.
//
// get sends requests and prints one JSON line per request: which pod
// answered, the peer address the kernel reports for the client socket
// (getpeername(2), which Kmesh rewrites), the client's local address, the
// client address the server saw, and a connection counter that shows whether
// a connection was reused. Failed requests are lines too, with "error" set;
// the exit code is 0 unless the arguments are wrong.
//
// tcp-serve and tcp-send move exact byte counts over raw TCP, for tests of
// connection telemetry: tcp-send connects, waits --hold, writes --bytes,
// shuts its write side, and reads the server's --reply bytes until EOF;
// it prints one JSON line per connection.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	case "tcp-serve":
		err = tcpServe(os.Args[2:])
	case "tcp-send":
		err = tcpSend(os.Args[2:])
	case "grpc-serve":
		err = grpcServe(os.Args[2:])
	case "grpc-check":
		err = grpcCheck(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-echo:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kmesh-echo serve --name NAME [--listen ADDR]...\n"+
		"       kmesh-echo get --url URL [--count N] [--interval D] [--keepalive] [--timeout D]\n"+
		"       kmesh-echo tcp-serve [--listen ADDR] [--reply N]\n"+
		"       kmesh-echo tcp-send --addr ADDR --bytes N [--count C] [--hold D]\n"+
		"       kmesh-echo grpc-serve [--listen ADDR] [--flip D]\n"+
		"       kmesh-echo grpc-check --addr HOST:PORT [--watch N]")
	os.Exit(2)
}

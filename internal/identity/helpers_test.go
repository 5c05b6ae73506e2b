package identity_test

import (
	"crypto/x509"
	"encoding/pem"
	"net"
)

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func tlsPipe() (net.Conn, net.Conn) { return net.Pipe() }

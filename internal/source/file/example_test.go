package file_test

import (
	"fmt"

	"github.com/kmesh-go/kmesh/internal/source/file"
)

func ExampleParse() {
	data := []byte(`services:
- name: hello
  addresses: ["10.96.0.10"]
  ports:
  - port: 70000
    protocol: UDP
`)
	_, err := file.Parse("mesh.yaml", data, "")
	fmt.Println(err)
	// Output:
	// mesh.yaml:5: services[0].ports[0].port: 70000 is out of range 1..65535
	// mesh.yaml:6: services[0].ports[0].protocol: unsupported protocol "UDP" (only TCP)
}

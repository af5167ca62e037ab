// Go's net/http client: one request, and what the application gets back.
//
//	go-client GET URL | go-client POST URL BYTES
//
// Prints "HTTP <status>" for a response, or the error as an application would log it
// (err.Error()) and, when the kernel's errno is inside it, "errno: <number>"; exits 1 then.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-version" {
		fmt.Println(runtime.Version())
		return
	}
	var body io.Reader
	if os.Args[1] == "POST" {
		size, _ := strconv.Atoi(os.Args[3])
		body = bytes.NewReader(bytes.Repeat([]byte("x"), size))
	}
	req, err := http.NewRequest(os.Args[1], os.Args[2], body)
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println(err)
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Printf("errno: %d\n", int(errno))
		}
		os.Exit(1)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fmt.Printf("HTTP %d\n", resp.StatusCode)
}

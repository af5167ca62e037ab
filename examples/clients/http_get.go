// Go's net/http client: one request, and what the application gets back.
//
//	go-client GET URL | go-client POST URL BYTES   [--then URL2]
//
// Prints "HTTP <status>" for a response, or the error as an application would log it
// (err.Error()) and, when the kernel's errno is inside it, "errno: <number>"; exits 1 then.
// --then URL2: once standard input is closed, the same request to URL2 with the same
// client (its pool of kept-alive connections); the first's result is printed as
// "first request: HTTP <status>".
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
	args, urls := os.Args[1:], []string{os.Args[2]}
	if n := len(args); args[n-2] == "--then" {
		args, urls = args[:n-2], append(urls, args[n-1])
	}
	client := http.DefaultClient
	for i, url := range urls {
		if i > 0 {
			io.Copy(io.Discard, os.Stdin) // the pause between the two requests
		}
		var body io.Reader
		if args[0] == "POST" {
			size, _ := strconv.Atoi(args[2])
			body = bytes.NewReader(bytes.Repeat([]byte("x"), size))
		}
		req, err := http.NewRequest(args[0], url, body)
		if err != nil {
			fmt.Println(err)
			os.Exit(2)
		}
		resp, err := client.Do(req)
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
		if i < len(urls)-1 {
			fmt.Print("first request: ")
		}
		fmt.Printf("HTTP %d\n", resp.StatusCode)
	}
}

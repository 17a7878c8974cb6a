// Package signerv1 holds the signer.v1 protobuf definitions of signerd's
// local gRPC API and the Go code generated from them.
//
// Regenerate with `go generate ./signer/api/` (needs Debian's
// protobuf-compiler and, on PATH, protoc-gen-go and protoc-gen-go-grpc:
// `go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
// google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2`).
package signerv1

//go:generate protoc -I . -I /usr/include --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative signer.proto

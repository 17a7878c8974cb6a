// Package xroadpb holds the protobuf definitions of X-Road's signer
// protocol (X-Road 7.x security servers, MIT-licensed: the services
// TokenService, KeyService, CertificateService and OcspService of package
// org.niis.xroad.signer.proto, and the shared messages that have no proto
// package), written for this project with X-Road's package, service,
// method, message and field names and numbers, so that the wire format is
// X-Road's; and the Go code generated from them.
//
// Regenerate with `go generate ./signer/xroad/xroadpb/` (the same tools as
// signer/api: protoc, protoc-gen-go and protoc-gen-go-grpc on PATH).
package xroadpb

//go:generate protoc -I . -I /usr/include --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative xroad_common_messages.proto xroad_error_handling.proto xroad_token_status_info.proto xroad_tokens.proto xroad_token_service.proto xroad_key_service.proto xroad_certificate_service.proto xroad_ocsp_service.proto

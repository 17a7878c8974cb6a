// Package xroad serves X-Road's own signer protocol (the gRPC services
// TokenService, KeyService, CertificateService and OcspService of X-Road
// 7.x, package org.niis.xroad.signer.proto) on a TCP listener with mutual
// TLS from the security server's internal keystore, so that an unmodified
// X-Road security server signs through signerd.
//
// Each X-Road call is mapped onto the signer.v1 method that does its
// work and run through signer.Call: the caller is the process whose uid
// the kernel names for the TCP connection (peercred), admitted by the
// same policy, limits and audit log as a caller on the Unix socket.
// Errors are X-Road's: gRPC INTERNAL with a CodedExceptionProto in the
// status details.
package xroad

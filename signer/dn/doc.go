// Package dn holds what goes into a certificate signing request made for a
// key in the HSM: the subject distinguished name, parsed strictly from the
// RFC 4514 string an officer writes, the requested extensions for the key's
// usage, and the check that an issued certificate fits that usage.
//
// # Distinguished names
//
// [Parse] reads the RFC 4514 string form. As RFC 4514 section 2.1 defines it,
// the string lists the RDNs in reverse order of the encoded RDNSequence: the
// rightmost RDN is the first one encoded. "CN=x,O=y,C=EE" therefore encodes C
// first, exactly as OpenSSL's -subj "/C=EE/O=y/CN=x" does, and prints back as
// "CN=x,O=y,C=EE" with `openssl x509 -nameopt RFC2253`.
//
// Accepted attribute types, case-insensitive, by short or long name or by
// their dotted OID (RFC 4514 numericoid):
//
//	CN  commonName              2.5.4.3   UTF8String, at most 64 characters
//	SN  surname                 2.5.4.4   UTF8String
//	serialNumber                2.5.4.5   PrintableString, at most 64 characters
//	C   countryName             2.5.4.6   PrintableString, two letters A-Z
//	L   localityName            2.5.4.7   UTF8String, at most 128 characters
//	ST  stateOrProvinceName     2.5.4.8   UTF8String, at most 128 characters
//	STREET streetAddress        2.5.4.9   UTF8String
//	O   organizationName        2.5.4.10  UTF8String, at most 64 characters
//	OU  organizationalUnitName  2.5.4.11  UTF8String, at most 64 characters
//	title                       2.5.4.12  UTF8String, at most 64 characters
//	GN  givenName               2.5.4.42  UTF8String
//	organizationIdentifier      2.5.4.97  UTF8String
//	DC  domainComponent         0.9.2342.19200300.100.1.25  IA5String, one DNS label
//	emailAddress                1.2.840.113549.1.9.1        IA5String, a bare address
//
// SN is the surname, as in RFC 4519 and OpenSSL, not the serial number:
// that is serialNumber. The length limits are the upper bounds of RFC 5280
// appendix A. Any other
// attribute type, also as a dotted OID, is refused: its value syntax is not
// known, and a certificate authority would have to guess it.
//
// Strictness, beyond the RFC 4514 grammar:
//   - the whole string is at most [MaxLength] bytes of valid UTF-8 and names
//     at least one RDN;
//   - spaces (U+0020) are allowed before an attribute type (at the start and
//     after ',' or '+', as in "CN=x, O=y, C=EE"), nowhere else unescaped:
//     a value's leading and trailing space must be escaped ("\ " or "\20");
//   - values must not be empty and, after unescaping, must be valid UTF-8
//     without control (Cc) or format (Cf, e.g. bidi overrides) characters;
//   - "#hex" (BER-encoded) values are refused: write the value as a string;
//   - ';' as RDN separator and quoted values (RFC 1779/2253 legacy) are refused;
//   - C, CN, SN, serialNumber, L, ST, STREET, O, title, GN,
//     organizationIdentifier and emailAddress may appear at most once in a
//     DN; OU and DC may repeat, but not with the same value; no type may
//     appear twice in one multi-valued RDN.
//
// A [Name] encodes itself ([Name.Marshal]) with the string type chosen per
// attribute as tabled above, so an x509.CertificateRequest carries it as
// RawSubject; Go's own pkix.Name encoding would pick PrintableString or
// UTF8String by content and reorder the attributes.
//
// # Requests and certificates
//
// [RequestTemplate] builds the x509.CertificateRequest template for a key of
// a given [Usage], and [CheckCertificate] checks that an issued certificate
// fits that usage.
package dn

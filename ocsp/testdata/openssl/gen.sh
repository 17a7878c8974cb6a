#!/usr/bin/env bash
# Regenerates the real openssl OCSP responses used by the tests and the fuzz
# seeds: run in an empty folder, copy ca.pem leaf.pem good.der good-nonce.der
# revoked.der reqn.der here; the keys are thrown away. FuzzVerify and
# TestVerifyOpenSSLResponses read them from this folder.
set -e
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -new -x509 -key ca.key -subj "/CN=Fuzz CA" -days 36500 -out ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign,digitalSignature
openssl ecparam -name prime256v1 -genkey -noout -out leaf.key
openssl req -new -key leaf.key -subj "/CN=Fuzz member" -out leaf.csr
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 0x1234 -days 36500 -out leaf.pem
# index: leaf good
printf 'V\t991231235959Z\t\t1234\tunknown\t/CN=Fuzz member\n' > index.txt
openssl ocsp -issuer ca.pem -cert leaf.pem -no_nonce -reqout req.der
openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -reqin req.der -respout good.der -ndays 36500
openssl ocsp -issuer ca.pem -cert leaf.pem -nonce -reqout reqn.der
openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -reqin reqn.der -respout good-nonce.der -ndays 36500
printf 'R\t991231235959Z\t260101000000Z,keyCompromise\t1234\tunknown\t/CN=Fuzz member\n' > index.txt
openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -reqin req.der -respout revoked.der -ndays 36500

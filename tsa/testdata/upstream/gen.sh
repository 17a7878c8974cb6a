#!/usr/bin/env bash
# Regenerates the openssl TSA answers FuzzVerifyResponse is seeded with: run in an
# empty folder, copy ca.pem data.txt req*.tsq resp*.tsr here (the keys are thrown away).
set -e
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -new -x509 -key ca.key -subj "/CN=Fuzz TSA CA" -days 36500 -out ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign
openssl ecparam -name prime256v1 -genkey -noout -out tsa.key
openssl req -new -key tsa.key -subj "/CN=Fuzz TSA" -out tsa.csr
printf 'extendedKeyUsage=critical,timeStamping\nkeyUsage=critical,digitalSignature\n' > ext.cnf
openssl x509 -req -in tsa.csr -CA ca.pem -CAkey ca.key -set_serial 7 -days 36500 -extfile ext.cnf -out tsa.pem
echo 01 > serial
cat > tsa.cnf <<CNF
[ tsa ]
default_tsa = t
[ t ]
dir = .
serial = ./serial
signer_cert = ./tsa.pem
signer_key = ./tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256
accuracy = secs:1
ess_cert_id_alg = sha256
CNF
printf 'stamped data\n' > data.txt
openssl ts -query -data data.txt -sha256 -cert -out req.tsq
openssl ts -reply -config tsa.cnf -queryfile req.tsq -out resp.tsr
openssl ts -query -data data.txt -sha256 -no_nonce -out req-nononce.tsq
openssl ts -reply -config tsa.cnf -queryfile req-nononce.tsq -out resp-nononce.tsr

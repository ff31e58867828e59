#!/usr/bin/env bash
# Makes a private CA and a certificate for PostgreSQL, so the gateways can verify the database
# (sslmode=verify-full) in deploy/docker-compose.prod.yaml:
#
#   bash deploy/tls/make-postgres-certs.sh [HOST ...]    # default host: postgres (the compose service)
#
# Writes, next to this script: postgres-ca.pem (the CA certificate the gateways trust),
# postgres-ca.key (keep it offline: it can sign certificates they would trust),
# postgres-server.pem and postgres-server.key (PostgreSQL's). An existing CA is reused, so
# running it again renews the server certificate only. Certificates last 825 days.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hosts=("${@:-postgres}")
umask 077
cd "$dir"
if [ ! -f postgres-ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout postgres-ca.key -out postgres-ca.pem -subj "/CN=Sluice PostgreSQL CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
san="$(printf 'DNS:%s,' "${hosts[@]}")"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout postgres-server.key -out postgres-server.csr -subj "/CN=${hosts[0]}" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
  "${san%,}" > postgres-server.ext
openssl x509 -req -in postgres-server.csr -CA postgres-ca.pem -CAkey postgres-ca.key -CAcreateserial \
  -days 825 -out postgres-server.pem -extfile postgres-server.ext 2>/dev/null
rm -f postgres-server.csr postgres-server.ext postgres-ca.srl
# Certificates are public, and the gateways (uid 10001) read the CA through a compose secret;
# the keys stay 0600 (the postgres container copies its key as root before starting).
chmod 644 postgres-ca.pem postgres-server.pem
echo "deploy/tls: postgres-ca.pem, postgres-server.pem (${hosts[*]}), postgres-server.key; keep postgres-ca.key safe"

# CI stand-in for the official postgres image (which cannot be pulled on our machines):
# Debian's PostgreSQL on the local debootstrap base, with the same environment contract
# (POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD; data in /var/lib/postgresql/data).
ARG BASE_IMAGE=kiln/python-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
 && rm -rf /var/lib/apt/lists/* && ln -s /usr/lib/postgresql/*/bin /usr/lib/postgresql/bin
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/bin:$PATH PGDATA=/var/lib/postgresql/data
RUN chmod 0755 /usr/local/bin/postgres-entrypoint.sh && mkdir -p /var/run/postgresql /var/lib/postgresql/data \
 && chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql && chmod 0700 /var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]

-- TLS to database servers: the CA (PEM) a registered server's certificate must chain to.
-- Null: the server is reached without TLS. A certificate is public; it is stored in clear.
-- Expand only: older binaries ignore the column (and reach such a server without TLS, which
-- a server that requires TLS refuses).
alter table db_servers add column ca_pem text;

-- Exports the control plane keeps expire: their archive is deleted after `export_retention`
-- (a purge's `export_first` archive has no expiry; it is the record of a deletion).
alter table tenant_exports add column expires_at timestamptz;
alter table tenant_exports drop constraint tenant_exports_status_check;
alter table tenant_exports add constraint tenant_exports_status_check
    check (status in ('running', 'succeeded', 'failed', 'expired'));
create index tenant_exports_expires_at_idx on tenant_exports (expires_at)
    where status in ('succeeded', 'failed');

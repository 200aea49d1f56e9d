-- Records management: a legal hold on a document (it can be neither deleted nor replaced while
-- held), and the objects of deleted documents still to be removed from storage.

alter table documents
    add column legal_hold_reason text
        constraint documents_legal_hold_reason_check
        check (length(legal_hold_reason) between 1 and 500),
    add column legal_hold_by text,
    add column legal_hold_at timestamptz,
    add constraint documents_legal_hold_check
        check ((legal_hold_at is null) = (legal_hold_reason is null)
           and (legal_hold_at is null) = (legal_hold_by is null));

-- A deleted document's rows go in one transaction that queues its objects here; the objects
-- are removed from storage after it commits, and their rows then. What a crash leaves is
-- removed by the next deletion of the tenant.
create table object_deletions (
    object_key text not null constraint object_deletions_pkey primary key,
    queued_at timestamptz not null default now()
);

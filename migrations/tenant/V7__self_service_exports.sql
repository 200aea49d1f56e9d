-- Self-service exports: a `data.export` permission (the built-in admin role has it) and a
-- four-eyes rule for exporting the organisation's data, on by default. The archives themselves
-- are made and kept by the control plane (catalog `tenant_exports`).
alter table role_permissions drop constraint role_permissions_permission_check,
    add constraint role_permissions_permission_check check (permission in (
        'documents.read', 'documents.upload', 'documents.manage', 'tickets.create',
        'tickets.read_all', 'tickets.manage', 'users.manage', 'roles.manage', 'sso.manage',
        'audit.read', 'data.export'));
insert into role_permissions (role, permission) values ('admin', 'data.export');

alter table approval_policy drop constraint approval_policy_action_check,
    add constraint approval_policy_action_check check (action in (
        'grant_privileged_role', 'change_privileged_role', 'change_sso_connection',
        'export_tenant_data'));
insert into approval_policy (action, required) values ('export_tenant_data', true);

"""Reviewed facts about built-in functions that pg_proc's volatility does not tell.

Reviewed against PostgreSQL 15's pg_catalog (every VOLATILE function, and the STABLE
ones that assign transaction ids or read server state) and checked on a hot standby
where it mattered. A name here applies to an unqualified or ``pg_catalog.`` call only.
"""

from __future__ import annotations

# VOLATILE built-ins with no side effect that a hot standby runs: a SELECT of them reads.
SIDE_EFFECT_FREE_VOLATILE: frozenset[str] = frozenset({
    # values that change from call to call
    "clock_timestamp", "timeofday", "random", "gen_random_uuid", "current_query",
    "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    # sizes, files and server state, read only
    "pg_database_size", "pg_relation_size", "pg_table_size", "pg_indexes_size",
    "pg_total_relation_size", "pg_tablespace_size", "pg_stat_file", "pg_read_file",
    "pg_read_file_old", "pg_read_binary_file", "pg_ls_dir", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalmapdir", "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir", "pg_current_logfile", "pg_show_all_file_settings",
    "pg_hba_file_rules", "pg_ident_file_mappings", "pg_control_init", "pg_jit_available",
    "pg_get_backend_memory_contexts", "pg_get_shmem_allocations",
    "pg_get_wal_resource_managers", "pg_notification_queue_usage",
    "pg_collation_actual_version", "pg_database_collation_actual_version",
    "pg_partition_ancestors", "pg_partition_tree", "pg_sequence_last_value", "currtid2",
    # large objects, read: a descriptor lives in the transaction that opened it (lo_open
    # itself reads or writes by its mode, decided where it is called)
    "lo_get", "loread", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64", "lo_close",
    # locks, transactions and statistics, read only
    "pg_isolation_test_session_is_blocked", "pg_prepared_xact", "pg_get_multixact_members",
    "pg_xact_commit_timestamp", "pg_xact_commit_timestamp_origin", "pg_xact_status",
    "txid_status", "pg_stat_have_stats", "pg_stat_clear_snapshot",
    "pg_stat_get_xact_blocks_fetched",
    "pg_stat_get_xact_blocks_hit", "pg_stat_get_xact_function_calls",
    "pg_stat_get_xact_function_self_time", "pg_stat_get_xact_function_total_time",
    "pg_stat_get_xact_numscans", "pg_stat_get_xact_tuples_deleted",
    "pg_stat_get_xact_tuples_fetched", "pg_stat_get_xact_tuples_hot_updated",
    "pg_stat_get_xact_tuples_inserted", "pg_stat_get_xact_tuples_returned",
    "pg_stat_get_xact_tuples_updated", "pg_replication_origin_progress",
    "pg_replication_origin_session_is_setup", "pg_replication_origin_session_progress",
})

# Built-ins that must run on the primary whatever any catalog says: a standby refuses
# them, or they act on state that lives where the writes are. STABLE ones are here too
# (txid_current assigns a transaction id).
PRIMARY_ONLY: frozenset[str] = frozenset({
    "nextval", "setval", "currval", "lastval",
    "txid_current", "pg_current_xact_id",
    "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
    "pg_notify", "pg_export_snapshot",
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
    "lo_creat", "lo_create", "lo_import", "lo_export", "lo_from_bytea", "lo_put", "lo_unlink",
    "lowrite", "lo_truncate", "lo_truncate64",
    # node administration: an operator means the primary, and only a standby would
    # promote or pause replay (never the standby a balancer happened to pick)
    "pg_promote", "pg_wal_replay_pause", "pg_wal_replay_resume", "pg_reload_conf",
    "pg_rotate_logfile", "pg_cancel_backend", "pg_terminate_backend",
})

# Built-ins whose answer says which node runs them: its role and recovery state, its
# WAL position and timeline, its own transactions and snapshot, its control file, its
# server process, its replication links and slots, its backends and their locks. A
# standby answers most of them without complaint (pg_is_in_recovery() is false only on
# the primary), and answers for itself while the caller meant the primary: they route
# to the primary whatever any catalog says. Reviewed against PostgreSQL 15's "System
# Administration Functions", "System Information Functions" and the statistics
# functions behind the views in NODE_IDENTITY_VIEWS. Left as reads on purpose:
# inet_server_addr/inet_server_port (clients use them to see the spread over nodes),
# pure functions of their arguments (pg_wal_lsn_diff, pg_snapshot_xmin), pg_control_init
# (initdb-time constants a standby copies), and cumulative statistics (pg_stat_get_*
# counters of tables, functions, databases and the background writer), which count
# work on each node as any reporting query would.
NODE_IDENTITY_FUNCTIONS: frozenset[str] = frozenset({
    # role and recovery
    "pg_is_in_recovery", "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state",
    "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp",
    "pg_stat_get_recovery_prefetch",
    # WAL position and timeline (a standby refuses the pg_current_wal_* and pg_walfile_*)
    "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn",
    "pg_walfile_name", "pg_walfile_name_offset",
    # the node's own transactions and snapshot
    "txid_current_if_assigned", "pg_current_xact_id_if_assigned", "pg_current_snapshot",
    "txid_current_snapshot", "pg_last_committed_xact",
    # control file
    "pg_control_checkpoint", "pg_control_recovery", "pg_control_system",
    # the server process and its backends
    "pg_backend_pid", "pg_postmaster_start_time", "pg_conf_load_time",
    "pg_stat_get_activity", "pg_stat_get_progress_info",
    "pg_lock_status", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids",
    # replication links, slots and WAL archiving
    "pg_stat_get_wal_receiver", "pg_stat_get_wal_senders", "pg_get_replication_slots",
    "pg_stat_get_replication_slot", "pg_stat_get_subscription",
    "pg_show_replication_origin_status", "pg_stat_get_wal", "pg_stat_get_archiver",
})

# Run-time parameters whose value says which node answers: a standby reports
# in_hot_standby on and forces transaction_read_only on. pgJDBC (targetServerType) and
# libpq (target_session_attrs) ask SHOW transaction_read_only to find the primary. The
# others name the node itself (its port, cluster name, files, addresses) or its link to
# a primary, and differ from node to node. For SHOW and current_setting() of a constant
# name; SHOW ALL, pg_settings and a computed name stay reads.
NODE_IDENTITY_SETTINGS: frozenset[str] = frozenset({
    "in_hot_standby", "transaction_read_only",
    "port", "cluster_name", "listen_addresses", "unix_socket_directories",
    "data_directory", "config_file", "hba_file", "ident_file", "external_pid_file",
    "primary_conninfo", "primary_slot_name",
})

# System views (pg_catalog) whose rows say which node answers, for the same reasons;
# each is built on functions of NODE_IDENTITY_FUNCTIONS.
NODE_IDENTITY_VIEWS: frozenset[str] = frozenset({
    "pg_stat_activity", "pg_stat_ssl", "pg_stat_gssapi", "pg_locks",
    "pg_stat_progress_analyze", "pg_stat_progress_basebackup", "pg_stat_progress_cluster",
    "pg_stat_progress_copy", "pg_stat_progress_create_index", "pg_stat_progress_vacuum",
    "pg_stat_replication", "pg_stat_wal_receiver", "pg_replication_slots",
    "pg_stat_replication_slots", "pg_stat_subscription", "pg_replication_origin_status",
    "pg_stat_wal", "pg_stat_archiver", "pg_stat_recovery_prefetch",
})

# Session-level advisory lock functions, and the ones that release such locks.
SESSION_ADVISORY_LOCKS: frozenset[str] = frozenset({
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
})
SESSION_ADVISORY_UNLOCKS: frozenset[str] = frozenset({
    "pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
})

# STABLE built-ins whose result moves with the clock: a cached result would go stale.
TIME_DEPENDENT: frozenset[str] = frozenset({
    "now", "statement_timestamp", "transaction_timestamp", "age", "mxid_age",
})

# STABLE built-ins whose result depends on server or session state outside a result
# cache's key (catalogs, privileges, statistics, settings, the connection): besides
# these names, every STABLE one whose name starts with a prefix below.
STATE_DEPENDENT: frozenset[str] = frozenset({
    "current_setting", "inet_client_addr", "inet_client_port", "inet_server_addr",
    "inet_server_port", "obj_description", "col_description", "shobj_description",
    "format_type", "row_security_active", "database_to_xml", "database_to_xmlschema",
    "database_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "table_to_xml", "table_to_xmlschema",
    "table_to_xml_and_xmlschema", "regclass",
})
STATE_DEPENDENT_PREFIXES: tuple[str, ...] = ("pg_", "has_", "to_reg", "txid_")

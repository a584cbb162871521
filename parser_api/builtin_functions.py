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
    # recovery and WAL replay status (meaningful on a standby)
    "pg_is_in_recovery", "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp", "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state", "pg_last_committed_xact",
    # sizes, files and server state, read only
    "pg_database_size", "pg_relation_size", "pg_table_size", "pg_indexes_size",
    "pg_total_relation_size", "pg_tablespace_size", "pg_stat_file", "pg_read_file",
    "pg_read_file_old", "pg_read_binary_file", "pg_ls_dir", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalmapdir", "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir", "pg_current_logfile", "pg_show_all_file_settings",
    "pg_hba_file_rules", "pg_ident_file_mappings", "pg_control_checkpoint",
    "pg_control_init", "pg_control_recovery", "pg_control_system", "pg_jit_available",
    "pg_get_backend_memory_contexts", "pg_get_shmem_allocations",
    "pg_get_wal_resource_managers", "pg_notification_queue_usage",
    "pg_collation_actual_version", "pg_database_collation_actual_version",
    "pg_partition_ancestors", "pg_partition_tree", "pg_sequence_last_value", "currtid2",
    # large objects, read: a descriptor lives in the transaction that opened it (lo_open
    # itself reads or writes by its mode, decided where it is called)
    "lo_get", "loread", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64", "lo_close",
    # locks, transactions and statistics, read only
    "pg_lock_status", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids",
    "pg_isolation_test_session_is_blocked", "pg_prepared_xact", "pg_get_multixact_members",
    "pg_xact_commit_timestamp", "pg_xact_commit_timestamp_origin", "pg_xact_status",
    "txid_status", "pg_stat_have_stats", "pg_stat_clear_snapshot",
    "pg_stat_get_recovery_prefetch", "pg_stat_get_xact_blocks_fetched",
    "pg_stat_get_xact_blocks_hit", "pg_stat_get_xact_function_calls",
    "pg_stat_get_xact_function_self_time", "pg_stat_get_xact_function_total_time",
    "pg_stat_get_xact_numscans", "pg_stat_get_xact_tuples_deleted",
    "pg_stat_get_xact_tuples_fetched", "pg_stat_get_xact_tuples_hot_updated",
    "pg_stat_get_xact_tuples_inserted", "pg_stat_get_xact_tuples_returned",
    "pg_stat_get_xact_tuples_updated", "pg_show_replication_origin_status",
    "pg_replication_origin_progress", "pg_replication_origin_session_is_setup",
    "pg_replication_origin_session_progress",
})

# Built-ins that must run on the primary whatever any catalog says: a standby refuses
# them, or they act on state that lives where the writes are. STABLE ones are here too
# (txid_current assigns a transaction id).
PRIMARY_ONLY: frozenset[str] = frozenset({
    "nextval", "setval", "currval", "lastval",
    "txid_current", "pg_current_xact_id",
    "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn",
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

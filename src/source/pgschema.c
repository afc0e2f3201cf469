/* engage: what the source reads from PostgreSQL besides the stream (see pgschema.h). */
#include <stdio.h>
#include <string.h>

#include "../core/pgtext.h"
#include "../db/pgconn.h"
#include "../enrich/enrich.h"
#include "pgschema.h"

int eng_pg_load_content(PGconn *c, const char *snapshot, struct eng_content_cache *cache,
                        struct eng_error *err)
{
    PGresult *r = eng_pg_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, err,
                              "could not begin snapshot transaction");
    if (r == NULL)
        return err->code;
    PQclear(r);
    if (snapshot != NULL) {
        char sql[128];
        snprintf(sql, sizeof(sql), "SET TRANSACTION SNAPSHOT '%s'", snapshot);
        r = eng_pg_exec(c, sql, 0, NULL, err, "could not use the slot's snapshot");
        if (r == NULL)
            goto fail;
        PQclear(r);
    }
    r = eng_pg_exec(c, "SELECT content_id, content_type, length_seconds FROM content", 0, NULL, err,
                    "could not read content");
    if (r == NULL)
        goto fail;
    eng_content_cache_clear(cache);
    for (int i = 0; i < PQntuples(r); i++) {
        struct eng_content row = {0};
        const char *id = PQgetvalue(r, i, 0);
        if (PQgetisnull(r, i, 0) || !eng_parse_i32(id, strlen(id), &row.content_id))
            continue;
        row.type_null = PQgetisnull(r, i, 1);
        row.content_type = PQgetvalue(r, i, 1);
        row.type_len = (uint32_t)PQgetlength(r, i, 1);
        row.length_null = PQgetisnull(r, i, 2);
        if (!row.length_null) {
            const char *l = PQgetvalue(r, i, 2);
            if (!eng_parse_i32(l, strlen(l), &row.length_seconds))
                row.length_null = true;
        }
        eng_content_cache_put(cache, &row);
    }
    PQclear(r);
    r = eng_pg_exec(c, "COMMIT", 0, NULL, err, "could not end snapshot transaction");
    if (r == NULL)
        return err->code;
    PQclear(r);
    return 0;
fail:
    PQclear(PQexec(c, "ROLLBACK"));
    return err->code;
}

int eng_pg_check_schema(PGconn *c, struct eng_error *err)
{
    PGresult *r = eng_pg_exec(c,
                              "SELECT t.relname, a.attname, a.atttypid, format_type(a.atttypid, "
                              "a.atttypmod) FROM pg_class t JOIN pg_attribute a ON a.attrelid = "
                              "t.oid WHERE t.oid IN (to_regclass('engagement_events'), "
                              "to_regclass('content')) AND a.attnum > 0 AND NOT a.attisdropped",
                              0, NULL, err, "could not read the source tables' columns");
    if (r == NULL)
        return err->code;
    int rc = 0;
    for (size_t i = 0; i < eng_column_rule_count && rc == 0; i++) {
        const struct eng_column_rule *rule = &eng_column_rules[i];
        int row = -1;
        for (int k = 0; k < PQntuples(r) && row < 0; k++) {
            if (strcmp(PQgetvalue(r, k, 0), rule->table) == 0 &&
                strcmp(PQgetvalue(r, k, 1), rule->column) == 0)
                row = k;
        }
        if (row < 0) {
            rc = eng_error_set(err, ENG_EINVAL, false,
                               "table %s has no column %s (%s) that engage reads (runbook: "
                               "create the tables as in scripts/schema.sql)",
                               rule->table, rule->column, rule->want);
            break;
        }
        uint32_t oid = 0;
        const char *text = PQgetvalue(r, row, 2);
        for (const char *d = text; *d >= '0' && *d <= '9'; d++)
            oid = oid * 10 + (uint32_t)(*d - '0');
        rc = eng_column_check(rule->table, rule->column, oid, PQgetvalue(r, row, 3), err);
    }
    PQclear(r);
    return rc;
}

/* engage: the Redis sink. One Lua script applies a slice of a batch atomically; a bitmap of
 * event ids (the seen-set) makes every application idempotent, so the pipeline may write a
 * batch again after a crash, a timeout or a lost reply and no value changes twice. */
#include <ctype.h>
#include <stdatomic.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "../core/metrics.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/url.h"
#include "redis.h"

/* The script, kept only here (no build step, nothing to keep in sync).
 *
 * ARGV: last_ttl, bucket_ttl, seen_ttl, top_ttl, gen, seq, nwin, mode ('newest' or 'all'),
 * then nwin minute names (YYYYMMDDHHMM) of the top window (nwin = 0: no rebuild in this
 * call), then the events in groups that share a seen-set chunk, a content and a bucket:
 *   chunk (event_id >> 20), content_id, minute bucket ('' = too old to touch a bucket),
 *   event_ts_us, event_id and json of the group's newest event, k, then k seen-set bits
 *   (event_id & (2^20 - 1)), the newest's first.
 * chunk, bit and the bucket name are computed in C so nothing depends on Lua arithmetic;
 * event_ts_us and event_id are compared as Lua numbers (doubles), exact below 2^53, which
 * the C side guarantees.
 *
 * Per event the script does only what cannot be shared: one test-and-set of its bit, k bits
 * per BITFIELD of a chunk (a redis.call per event cost more than the rest of the script);
 * only an event whose bit was newly set is counted and added to its bucket. The effects
 * are aggregated per group and per content first, so Redis sees one INCRBY per content,
 * one ZINCRBY per (bucket, content) and at most one SET pair per content, after reading
 * their counts and last values with MGET (1,000 keys a command): the work is proportional
 * to the slice, never to the keyspace (no KEYS, no SCAN).
 *
 * A group offers its newest event as the content's last, which is right when that event is
 * newly applied: then nothing newer of its group is. In mode 'newest' the script checks
 * that first (BITFIELD_RO, before any write) and otherwise answers ENGAGE_RESEND having
 * written nothing; the sink then sends the call again in mode 'all', every event a group of
 * one with its own JSON, the order of the batch (so a replay that overlaps what Redis has
 * still offers the newest event that is new, as a script per event would). An event_id
 * that repeats within a call also makes the sink use mode 'all'. Either way the effects are
 * those of applying the events one by one in the batch's order.
 *
 * A chunk of the seen-set is created at its full size (SETBIT of its last bit) the first
 * time a call touches it: grown bit by bit, Redis's greedy string growth would leave it with
 * a 256 KiB allocation for 128 KiB of bits; created whole it takes one 160 KiB jemalloc
 * size class (131072 bytes + the sds header), measured by tests/sinkcheck.
 *
 * content:last must stay exactly the event JSON, so the (event_ts_us, event_id) of the
 * stored value lives in a companion string engage:last:{content_id} = "ts_us:event_id" with
 * the same TTL, written in the same SET pair. A companion whose content:last is gone (an
 * operator deleted it, eviction) is ignored.
 *
 * Keys are built inside the script instead of being passed in KEYS: Redis Cluster is out of
 * scope, so the keys of one call need not share a hash slot (a standalone server or a
 * replicated primary accepts undeclared keys in scripts without a shebang).
 *
 * Redis does not roll a script back on a runtime error, so the script first checks every
 * key it will write (its type, and that a count holds an integer) and writes nothing when
 * one is wrong: it answers ENGAGE_BADKEY naming the key, a permanent error for the events
 * that touch that key (the pipeline finds and parks them; the others are applied). An OOM
 * server refuses the first write (SETBIT or BITFIELD) before anything changed, so OOM is
 * retriable.
 *
 * Loss: the hash engage:mark holds a generation (gen, random, made when engage first finds
 * no mark) and a write count (seq, +1 per call, in the same script as the counts). A call
 * names the generation it expects and the highest count this process has seen; a Redis that
 * restarted empty, was flushed, or failed over to a replica that missed writes answers
 * ENGAGE_LOST and writes nothing. The seen-set and the counts were lost together, so
 * writing every event of the table again (a whole-table backfill) makes them exact. */
#define SEEN_BITS     20        /* ids per seen-set key: 2^20 (128 KiB of bits) */
#define SEEN_LAST_BIT "1048575" /* 2^SEEN_BITS - 1, as the script spells it */
/* Keys per MGET and events per BITFIELD: Lua's unpack stops at 8000 values. */
#define UNPACK_MAX   "1000"
#define BITFIELD_MAX "1000"

/* In three parts, joined when a sink is created: C17 compilers need not take a string literal
 * this long. The first reads and checks, the second applies the seen-set, the third writes. */
static const char apply_script_check[] =
    "local last_ttl, bucket_ttl, seen_ttl, top_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), "
    "ARGV[4]\n"
    "local nwin, newest = tonumber(ARGV[7]), ARGV[8] == 'newest'\n"
    "if redis.call('TYPE', 'engage:mark')['ok'] ~= 'hash' then\n"
    "  return redis.error_reply('ENGAGE_LOST engage:mark is gone')\n"
    "end\n"
    "local mark = redis.call('HMGET', 'engage:mark', 'gen', 'seq')\n"
    "if mark[1] ~= ARGV[5] then\n"
    "  return redis.error_reply('ENGAGE_LOST engage:mark holds generation ' .. tostring(mark[1]) "
    "..\n"
    "    ', not ' .. ARGV[5])\n"
    "end\n"
    "if (tonumber(mark[2]) or -1) < tonumber(ARGV[6]) then\n"
    "  return redis.error_reply('ENGAGE_LOST engage:mark is at write ' .. tostring(mark[2]) ..\n"
    "    ', this engage saw ' .. tonumber(ARGV[6]))\n"
    "end\n"
    "local cids, ncid, incall = {}, 0, {}\n"
    "local chunks, nchunk, inchunk = {}, 0, {}\n"
    "local blist, nb, inb = {}, 0, {}\n"
    "local gs, ng = {}, 0\n"
    "local s, nargs = 9 + nwin, #ARGV\n"
    "while s <= nargs do\n"
    "  ng = ng + 1; gs[ng] = s\n"
    "  local c, cid, b = ARGV[s], ARGV[s + 1], ARGV[s + 2]\n"
    "  if not inchunk[c] then inchunk[c] = true; nchunk = nchunk + 1; chunks[nchunk] = c end\n"
    "  if not incall[cid] then incall[cid] = true; ncid = ncid + 1; cids[ncid] = cid end\n"
    "  if b ~= '' and not inb[b] then inb[b] = true; nb = nb + 1; blist[nb] = b end\n"
    "  s = s + 7 + tonumber(ARGV[s + 6])\n"
    "end\n"
    "local known, val = {}, {}\n"
    "local function prefetch(prefix)\n"
    "  local keys = {}\n"
    "  for k = 1, ncid do keys[k] = prefix .. cids[k] end\n"
    "  for f = 1, ncid, " UNPACK_MAX " do\n"
    "    local got = redis.call('MGET', unpack(keys, f, math.min(f + " UNPACK_MAX " - 1, ncid)))\n"
    "    for k = 1, #got do\n"
    "      if got[k] then known[keys[f + k - 1]], val[keys[f + k - 1]] = 'string', got[k] end\n"
    "    end\n"
    "  end\n"
    "  return keys\n"
    "end\n"
    "local ckeys = prefetch('content:count:')\n"
    "local lkeys = prefetch('content:last:')\n"
    "local okeys = prefetch('engage:last:')\n"
    "local function need(key, want, int)\n"
    "  local t = known[key]\n"
    "  if t == nil then t = redis.call('TYPE', key)['ok']; known[key] = t end\n"
    "  if t ~= 'none' and t ~= want then\n"
    "    return key .. ' holds a ' .. t .. ', engage keeps a ' .. want .. ' there'\n"
    "  end\n"
    "  if int and t == 'string' then\n"
    "    local v = val[key] or redis.call('GET', key)\n"
    "    if not string.match(v, '^%-?%d+$') then\n"
    "      return key .. ' holds a string that is not an integer'\n"
    "    end\n"
    "  end\n"
    "  return nil\n"
    "end\n"
    "local function check()\n"
    "  for k = 1, nchunk do\n"
    "    local why = need('engage:seen:' .. chunks[k], 'string')\n"
    "    if why then return why end\n"
    "  end\n"
    "  for k = 1, ncid do\n"
    "    local c, l, o = ckeys[k], lkeys[k], okeys[k]\n"
    "    local why\n"
    "    if val[c] and val[l] and val[o] then\n"
    "      if not string.match(val[c], '^%-?%d+$') then\n"
    "        why = c .. ' holds a string that is not an integer'\n"
    "      end\n"
    "    else\n"
    "      why = need(c, 'string', true) or need(l, 'string') or need(o, 'string')\n"
    "    end\n"
    "    if why then return why end\n"
    "  end\n"
    "  for k = 1, nb do\n"
    "    local why = need('top:content:bucket:' .. blist[k], 'zset')\n"
    "    if why then return why end\n"
    "  end\n"
    "  if nwin > 0 then return need('top:content:10m', 'zset') or need('engage:top:end', 'string') "
    "end\n"
    "  return nil\n"
    "end\n"
    "local why = check()\n"
    "if why then return redis.error_reply('ENGAGE_BADKEY ' .. why) end\n";
static const char apply_script_seen[] =
    "if newest then\n"
    "  local probe = {}\n"
    "  for q = 1, ng do\n"
    "    local c = ARGV[gs[q]]\n"
    "    if known['engage:seen:' .. c] ~= 'none' then\n"
    "      local p = probe[c]\n"
    "      if p == nil then p = {}; probe[c] = p end\n"
    "      local m = #p\n"
    "      p[m + 1], p[m + 2], p[m + 3] = 'GET', 'u1', ARGV[gs[q] + 7]\n"
    "    end\n"
    "  end\n"
    "  for c, p in pairs(probe) do\n"
    "    for f = 1, #p, 3 * " BITFIELD_MAX " do\n"
    "      local got = redis.call('BITFIELD_RO', 'engage:seen:' .. c,\n"
    "        unpack(p, f, math.min(f + 3 * " BITFIELD_MAX " - 1, #p)))\n"
    "      for j = 1, #got do\n"
    "        if got[j] ~= 0 then\n"
    "          return redis.error_reply('ENGAGE_RESEND the newest event of a group was applied "
    "before')\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local gfresh, sized = {}, {}\n"
    "local args, opg, nop, opchunk = {}, {}, 0, nil\n"
    "local function flush()\n"
    "  if nop == 0 then return end\n"
    "  local seen = 'engage:seen:' .. opchunk\n"
    "  if known[seen] == 'none' and not sized[seen] then\n"
    "    sized[seen] = true\n"
    "    redis.call('SETBIT', seen, " SEEN_LAST_BIT ", 0)\n"
    "  end\n"
    "  local old = redis.call('BITFIELD', seen, unpack(args, 1, 4 * nop))\n"
    "  for j = 1, nop do\n"
    "    if old[j] == 0 then local q = opg[j]; gfresh[q] = (gfresh[q] or 0) + 1 end\n"
    "  end\n"
    "  nop = 0\n"
    "end\n"
    "for q = 1, ng do\n"
    "  local g = gs[q]\n"
    "  if ARGV[g] ~= opchunk then flush(); opchunk = ARGV[g] end\n"
    "  for k = g + 7, g + 6 + tonumber(ARGV[g + 6]) do\n"
    "    if nop == " BITFIELD_MAX " then flush() end\n"
    "    nop = nop + 1\n"
    "    local o = 4 * nop\n"
    "    args[o - 3], args[o - 2], args[o - 1], args[o] = 'SET', 'u1', ARGV[k], '1'\n"
    "    opg[nop] = q\n"
    "  end\n"
    "end\n"
    "flush()\n"
    "if seen_ttl > 0 then\n"
    "  for k = 1, nchunk do redis.call('EXPIRE', 'engage:seen:' .. chunks[k], seen_ttl) end\n"
    "end\n"
    "local fresh = 0\n"
    "local counts, buckets = {}, {}\n"
    "local bidx, bts, bid = {}, {}, {}\n"
    "for q = 1, ng do\n"
    "  local n = gfresh[q]\n"
    "  if n then\n"
    "    local g = gs[q]\n"
    "    local cid, bucket = ARGV[g + 1], ARGV[g + 2]\n"
    "    fresh = fresh + n\n"
    "    counts[cid] = (counts[cid] or 0) + n\n"
    "    if bucket ~= '' then\n"
    "      local z = buckets[bucket]\n"
    "      if z == nil then z = {}; buckets[bucket] = z end\n"
    "      z[cid] = (z[cid] or 0) + n\n"
    "    end\n"
    "    local ts, id = tonumber(ARGV[g + 3]), tonumber(ARGV[g + 4])\n"
    "    local bt = bts[cid]\n"
    "    if bt == nil or ts > bt or (ts == bt and id > bid[cid]) then\n"
    "      bidx[cid], bts[cid], bid[cid] = g, ts, id\n"
    "    end\n"
    "  end\n"
    "end\n";
static const char apply_script_write[] =
    "for cid, n in pairs(counts) do redis.call('INCRBY', 'content:count:' .. cid, n) end\n"
    "for bucket, z in pairs(buckets) do\n"
    "  local key = 'top:content:bucket:' .. bucket\n"
    "  for cid, n in pairs(z) do redis.call('ZINCRBY', key, n, cid) end\n"
    "  redis.call('EXPIRE', key, bucket_ttl)\n"
    "end\n"
    "for cid, g in pairs(bidx) do\n"
    "  local last, ord = 'content:last:' .. cid, 'engage:last:' .. cid\n"
    "  local newer = true\n"
    "  local cur = val[ord]\n"
    "  if cur and known[last] == 'string' then\n"
    "    local ct, ci = string.match(cur, '^(%-?%d+):(%d+)$')\n"
    "    ct, ci = tonumber(ct), tonumber(ci)\n"
    "    if ct ~= nil and ci ~= nil and\n"
    "       (ct > bts[cid] or (ct == bts[cid] and ci >= bid[cid])) then\n"
    "      newer = false\n"
    "    end\n"
    "  end\n"
    "  if newer then\n"
    "    redis.call('SET', last, ARGV[g + 5], 'EX', last_ttl)\n"
    "    redis.call('SET', ord, ARGV[g + 3] .. ':' .. ARGV[g + 4], 'EX', last_ttl)\n"
    "  end\n"
    "end\n"
    "if nwin > 0 then\n"
    "  local top, mark = 'top:content:10m', 'engage:top:end'\n"
    "  if redis.call('GET', mark) == ARGV[9] and redis.call('EXISTS', top) == 1 then\n"
    "    local inwin = {}\n"
    "    for k = 1, nwin do inwin[ARGV[8 + k]] = true end\n"
    "    for bucket, z in pairs(buckets) do\n"
    "      if inwin[bucket] then\n"
    "        for cid, n in pairs(z) do redis.call('ZINCRBY', top, n, cid) end\n"
    "      end\n"
    "    end\n"
    "  else\n"
    "    local keys = {}\n"
    "    for k = 1, nwin do keys[k] = 'top:content:bucket:' .. ARGV[8 + k] end\n"
    "    redis.call('ZUNIONSTORE', top, nwin, unpack(keys))\n"
    "  end\n"
    "  redis.call('SET', mark, ARGV[9], 'EX', top_ttl)\n"
    "  redis.call('EXPIRE', top, top_ttl)\n"
    "end\n"
    "return {fresh, redis.call('HINCRBY', 'engage:mark', 'seq', 1)}\n";

#define HEADER_ARGS         8 /* ARGV before the window names */
#define MARK_KEY            "engage:mark"
#define SEQ_DIGITS          19  /* the write count as the script gets it, zero-padded */
#define EVENT_ARGS          8   /* ARGV per event at most (a group of one: 7 + its bit) */
#define CALL_PREFIX         3   /* EVALSHA sha 0 */
#define NUM_SLOT            8   /* bytes of a seen-set bit's text (7 digits at most) */
#define GNUM_SLOT           112 /* bytes of a group's numbers and bucket name (97 at most) */
#define MAX_EXACT           ((int64_t)1 << 53)
#define MAX_EVENTS_PER_CALL 100000

/* The events of one call go to the script in groups of one seen-set chunk, content and
 * bucket (build_call). The tables that find them are open addressing over slots that belong
 * to the call whose stamp they carry. */
struct call_group {
    int64_t chunk, minute;
    int32_t content_id;
    uint32_t count, start; /* its events: r->order[start, start + count) */
    uint32_t newest;       /* index in the batch of its newest event */
};

struct group_slot {
    uint32_t stamp, group;
};

struct id_slot {
    uint32_t stamp;
    int64_t event_id;
};

struct redis_sink {
    struct eng_sink base;
    struct eng_redis_url url;
    struct eng_redis_options opt;
    redisContext *ctx;
    char *script; /* apply_script_check + apply_script_seen + apply_script_write */
    char sha[41];

    /* One call's argument vector, reused across calls. */
    const char **argv;
    size_t *argvlen;
    char *num;  /* NUM_SLOT bytes per event: its seen-set bit */
    char *gnum; /* GNUM_SLOT bytes per group: its numbers and bucket name */
    struct call_group *groups;
    uint32_t ngroups;
    uint32_t *order;    /* batch indexes of the call's events, group by group */
    uint32_t *group_at; /* the group of each event of the call, in the batch's order */
    struct group_slot *group_slots;
    struct id_slot *ids;
    uint32_t slot_mask, stamp;
    char header[4][16];
    char nwin_text[4];
    /* The generation of Redis's data this process writes into ("" until the first open) and
     * the highest write count it has seen, as the script reads them (fixed width). */
    char gen[ENG_REDIS_GEN_LEN + 1];
    char known_gen[ENG_REDIS_GEN_LEN + 1]; /* opt.known_gen, copied ("" none) */
    int64_t seq;
    char seq_text[24]; /* SEQ_DIGITS digits */
    char window[ENG_REDIS_MAX_TOP_MINUTES][13];

    struct eng_counter *m_events;
    struct eng_counter *m_batches;
    struct eng_counter *m_errors;
    struct eng_counter *m_duplicates;
    struct eng_counter *m_lost;
    struct eng_gauge *m_skew;

    /* The server's clock (TIME), read once a minute and carried forward on the monotonic
     * clock: "now" for the top window is Redis's, not this machine's. */
    int64_t server_base_us, mono_base_us;
};

void eng_redis_options_init(struct eng_redis_options *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->last_ttl_s = 3600;
    opt->bucket_ttl_s = 900;
    opt->top_ttl_s = 120;
    opt->seen_ttl_s = 0;
    opt->top_minutes = 10;
    opt->connect_timeout_ms = 2000;
    opt->command_timeout_ms = 10000;
    opt->max_events_per_call = 1000;
    opt->now_us = NULL;
}

/* ---- URL ---- */

static bool parse_uint(const char *s, size_t n, long max, long *out)
{
    if (n == 0 || n > 10)
        return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

void eng_redis_url_free(struct eng_redis_url *u)
{
    if (u == NULL)
        return;
    free(u->host);
    free(u->user);
    free(u->password);
    memset(u, 0, sizeof(*u));
}

/* "redis://" (and a clear word on "rediss://", which is not supported). */
static bool check_scheme(const char *url, struct eng_error *err)
{
    if (url != NULL && strncasecmp(url, "redis://", 8) == 0)
        return true;
    if (url != NULL && strncasecmp(url, "rediss://", 9) == 0)
        eng_error_set(err, ENG_EINVAL, false,
                      "invalid redis url: tls (rediss://) is not supported");
    else
        eng_error_set(err, ENG_EINVAL, false, "invalid redis url: it must start with \"redis://\"");
    return false;
}

/* The userinfo of the authority [auth, end): the part before the last '@' (a password may
 * hold '@' only percent-encoded, but be lenient like redis-cli and split at the last one).
 * Returns where the host starts, or NULL with err set. */
static const char *parse_userinfo(const char *auth, const char *end, struct eng_redis_url *out,
                                  struct eng_error *err)
{
    const char *at = NULL;
    for (const char *p = auth; p < end; p++) {
        if (*p == '@')
            at = p;
    }
    if (at == NULL)
        return auth;
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    const char *pass = auth;
    if (colon != NULL) {
        if (colon > auth) {
            out->user = eng_percent_decode(auth, (size_t)(colon - auth));
            if (out->user == NULL) {
                eng_error_set(err, ENG_EINVAL, false, "invalid redis url: bad escape in the user");
                return NULL;
            }
        }
        pass = colon + 1;
    }
    if (at > pass) {
        out->password = eng_percent_decode(pass, (size_t)(at - pass));
        if (out->password == NULL) {
            eng_error_set(err, ENG_EINVAL, false, "invalid redis url: bad escape in the password");
            return NULL;
        }
    }
    return at + 1;
}

/* The host in [host, end), IPv6 in brackets. Returns where it ends (at ':' or end), or NULL
 * with err set. */
static const char *parse_host(const char *host, const char *end, struct eng_redis_url *out,
                              struct eng_error *err)
{
    const char *host_end;
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(end - host));
        if (close == NULL || close == host + 1) {
            eng_error_set(err, ENG_EINVAL, false, "invalid redis url: bad ipv6 host");
            return NULL;
        }
        out->host = eng_strndup(host + 1, (size_t)(close - host - 1));
        host_end = close + 1;
        if (host_end < end && *host_end != ':') {
            eng_error_set(err, ENG_EINVAL, false, "invalid redis url: bad ipv6 host");
            return NULL;
        }
        return host_end;
    }
    host_end = memchr(host, ':', (size_t)(end - host));
    if (host_end == NULL)
        host_end = end;
    if (host_end == host) {
        eng_error_set(err, ENG_EINVAL, false, "invalid redis url: missing host");
        return NULL;
    }
    out->host = eng_strndup(host, (size_t)(host_end - host));
    return host_end;
}

/* ":port" in [p, end), or nothing (p == end). */
static bool parse_port(const char *p, const char *end, struct eng_redis_url *out,
                       struct eng_error *err)
{
    if (p == end)
        return true;
    const char *port = p + 1; /* after ':' */
    long v;
    if (!parse_uint(port, (size_t)(end - port), 65535, &v) || v == 0) {
        eng_error_set(err, ENG_EINVAL, false, "invalid redis url: bad port \"%.*s\"",
                      (int)(end - port), port);
        return false;
    }
    out->port = (int)v;
    return true;
}

/* "/db" after the authority, or nothing. */
static bool parse_db(const char *end, struct eng_redis_url *out, struct eng_error *err)
{
    if (*end != '/' || end[1] == '\0')
        return true;
    long v;
    if (!parse_uint(end + 1, strlen(end + 1), INT_MAX, &v)) {
        eng_error_set(err, ENG_EINVAL, false, "invalid redis url: bad database \"%s\"", end + 1);
        return false;
    }
    out->db = (int)v;
    return true;
}

int eng_redis_url_parse(const char *url, struct eng_redis_url *out, struct eng_error *err)
{
    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (!check_scheme(url, err))
        goto fail;
    const char *auth = url + 8;
    const char *end = auth + strcspn(auth, "/?#");
    if (*end == '?' || *end == '#' || (*end == '/' && strpbrk(end, "?#") != NULL)) {
        eng_error_set(err, ENG_EINVAL, false,
                      "invalid redis url: query and fragment are not supported");
        goto fail;
    }
    const char *host = parse_userinfo(auth, end, out, err);
    if (host == NULL)
        goto fail;
    const char *host_end = parse_host(host, end, out, err);
    if (host_end == NULL || !parse_port(host_end, end, out, err) || !parse_db(end, out, err))
        goto fail;
    return 0;

fail:
    eng_redis_url_free(out);
    return ENG_EINVAL;
}

/* ---- argument text ---- */

/* Writes v in decimal at dst, NUL-terminated; returns the length. dst needs 21 bytes. */
static size_t put_i64(char *dst, int64_t v)
{
    char tmp[20];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    size_t len = 0;
    if (v < 0)
        dst[len++] = '-';
    while (n > 0)
        dst[len++] = tmp[--n];
    dst[len] = '\0';
    return len;
}

static void put_digits(char *dst, int v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        dst[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* The minute bucket name YYYYMMDDHHMM (UTC) of a time in microseconds at dst (13 bytes).
 * Returns false for a year outside 0..9999, which such a name cannot spell. */
static bool minute_name(int64_t ts_us, char *dst)
{
    int64_t sec = ts_us / 1000000;
    if (ts_us % 1000000 < 0)
        sec--;
    time_t t = (time_t)sec;
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
        return false;
    put_digits(dst, tm.tm_year + 1900, 4);
    put_digits(dst + 4, tm.tm_mon + 1, 2);
    put_digits(dst + 6, tm.tm_mday, 2);
    put_digits(dst + 8, tm.tm_hour, 2);
    put_digits(dst + 10, tm.tm_min, 2);
    dst[12] = '\0';
    return true;
}

/* ---- connection ---- */

static void drop_connection(struct redis_sink *r)
{
    if (r->ctx != NULL) {
        redisFree(r->ctx);
        r->ctx = NULL;
    }
}

static struct timeval ms_to_tv(uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* Error replies a server gives while it cannot serve for now; everything else (script
 * errors, WRONGTYPE, WRONGPASS, NOPERM, ...) needs an operator. */
static bool reply_error_retriable(const char *msg)
{
    static const char *const transient[] = {"LOADING",  "BUSY", "MASTERDOWN",  "TRYAGAIN",
                                            "READONLY", "OOM",  "CLUSTERDOWN", "NOREPLICAS"};
    for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++) {
        size_t n = strlen(transient[i]);
        if (strncmp(msg, transient[i], n) == 0 && (msg[n] == ' ' || msg[n] == '\0'))
            return true;
    }
    return false;
}

/* A wrong password or user, no rights, a database the server does not have: an operator's
 * fix (ENG_EDENIED: retried for a short while, then fatal). */
static bool reply_denied(const char *msg)
{
    return strncmp(msg, "WRONGPASS", 9) == 0 || strncmp(msg, "NOAUTH", 6) == 0 ||
           strncmp(msg, "NOPERM", 6) == 0 || strstr(msg, "invalid password") != NULL ||
           strstr(msg, "DB index is out of range") != NULL;
}

/* Runs one command. On success returns 0 and *out (freed by the caller); a connection
 * failure drops the connection and returns a retriable ENG_EIO; an error reply returns
 * ENG_EIO classified by reply_error_retriable, with what as the message's subject. The
 * reply of a NOSCRIPT, ENGAGE_LOST or ENGAGE_RESEND error is handed back in *out with rc 0,
 * for the caller to handle. */
/* command()'s reading of a reply (NULL: the connection failed). */
static int checked_reply(struct redis_sink *r, redisReply *reply, const char *what,
                         redisReply **out, struct eng_error *err)
{
    *out = NULL;
    if (reply == NULL) {
        int rc = eng_error_set(err, ENG_EIO, true, "redis %s failed on \"%s:%d\": %s", what,
                               r->url.host, r->url.port, r->ctx->errstr);
        drop_connection(r);
        return rc;
    }
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) != 0 &&
        strncmp(reply->str, "ENGAGE_LOST", 11) != 0 &&
        strncmp(reply->str, "ENGAGE_RESEND", 13) != 0) {
        bool denied = reply_denied(reply->str);
        bool retriable = denied || reply_error_retriable(reply->str);
        int rc = eng_error_set(err, denied ? ENG_EDENIED : ENG_EIO, retriable,
                               "redis %s failed: %s", what, reply->str);
        freeReplyObject(reply);
        if (retriable)
            drop_connection(r);
        return rc;
    }
    *out = reply;
    return 0;
}

static int command(struct redis_sink *r, int argc, const char **argv, const size_t *argvlen,
                   const char *what, redisReply **out, struct eng_error *err)
{
    return checked_reply(r, redisCommandArgv(r->ctx, argc, argv, argvlen), what, out, err);
}

static int load_script(struct redis_sink *r, struct eng_error *err)
{
    const char *argv[] = {"SCRIPT", "LOAD", r->script};
    const size_t len[] = {6, 4, strlen(r->script)};
    redisReply *reply;
    int rc = command(r, 3, argv, len, "script load", &reply, err);
    if (rc != 0)
        return rc;
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        rc = eng_error_set(err, ENG_EPROTO, false, "redis script load: unexpected reply");
    } else {
        memcpy(r->sha, reply->str, 40);
        r->sha[40] = '\0';
    }
    freeReplyObject(reply);
    return rc;
}

/* ---- loss detection (engage:mark) ---- */

static const char mark_script[] =
    "local t = redis.call('TYPE', KEYS[1])['ok']\n"
    "if t ~= 'hash' and t ~= 'none' then redis.call('DEL', KEYS[1]) end\n"
    "local m = redis.call('HMGET', KEYS[1], 'gen', 'seq')\n"
    "local behind = 0\n"
    "if m[1] and m[1] == ARGV[2] and (tonumber(m[2]) or -1) < tonumber(ARGV[3]) then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  behind = 1\n"
    "end\n"
    "local created = redis.call('HSETNX', KEYS[1], 'gen', ARGV[1])\n"
    "if created == 1 then redis.call('HSET', KEYS[1], 'seq', 0) end\n"
    "m = redis.call('HMGET', KEYS[1], 'gen', 'seq')\n"
    "return {created, behind, m[1], tonumber(m[2]) or 0}\n";

static void set_seq(struct redis_sink *r, int64_t seq)
{
    r->seq = seq < 0 ? 0 : seq;
    snprintf(r->seq_text, sizeof(r->seq_text), "%0*lld", SEQ_DIGITS, (long long)r->seq);
}

static void new_gen(char out[ENG_REDIS_GEN_LEN + 1])
{
    unsigned char raw[ENG_REDIS_GEN_LEN / 2];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
        eng_die("getrandom failed");
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = "0123456789abcdef"[raw[i] >> 4];
        out[2 * i + 1] = "0123456789abcdef"[raw[i] & 15];
    }
    out[ENG_REDIS_GEN_LEN] = '\0';
}

/* Why Redis no longer holds what engage wrote, or NULL when it does. */
static const char *mark_loss(const struct redis_sink *r, bool created, bool behind, const char *gen)
{
    if (r->gen[0] != '\0') { /* this process wrote into r->gen */
        if (behind)
            return "engage:mark is behind the writes this engage made (a failover to a replica "
                   "that missed them, or a restart from an older snapshot)";
        if (created)
            return "engage:mark is gone (a restart without persistence, or a flush)";
        if (strcmp(gen, r->gen) != 0)
            return "engage:mark holds another generation (lost and rebuilt elsewhere)";
        return NULL;
    }
    if (r->known_gen[0] != '\0' && strcmp(gen, r->known_gen) != 0)
        return created ? "there is no engage:mark, but the state directory says engage wrote "
                         "to this redis before"
                       : "engage:mark holds another generation than the state directory "
                         "recorded (a rebuild did not finish, or another redis)";
    return NULL;
}

/* Reads (or creates) engage:mark and takes up its generation; when Redis lost what this
 * engage or the state directory knew it held, says so in the log and through on_mark. On
 * every new connection and after ENGAGE_LOST. */
static int mark_sync(struct redis_sink *r, struct eng_error *err)
{
    char fresh[ENG_REDIS_GEN_LEN + 1];
    new_gen(fresh);
    const char *argv[] = {"EVAL", mark_script, "1", MARK_KEY, fresh, r->gen, r->seq_text};
    const size_t len[] = {4,
                          sizeof(mark_script) - 1,
                          1,
                          strlen(MARK_KEY),
                          ENG_REDIS_GEN_LEN,
                          strlen(r->gen),
                          strlen(r->seq_text)};
    redisReply *reply;
    int rc = command(r, 7, argv, len, "mark", &reply, err);
    if (rc != 0)
        return rc;
    redisReply **e = reply->element;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        e[0]->type != REDIS_REPLY_INTEGER || e[1]->type != REDIS_REPLY_INTEGER ||
        e[2]->type != REDIS_REPLY_STRING || e[2]->len != ENG_REDIS_GEN_LEN ||
        e[3]->type != REDIS_REPLY_INTEGER) {
        freeReplyObject(reply);
        return eng_error_set(err, ENG_EPROTO, false,
                             "redis engage:mark: unexpected reply (not a hash engage wrote?)");
    }
    const char *lost = mark_loss(r, e[0]->integer == 1, e[1]->integer == 1, e[2]->str);
    memcpy(r->gen, e[2]->str, ENG_REDIS_GEN_LEN + 1);
    set_seq(r, e[3]->integer);
    freeReplyObject(reply);
    if (lost != NULL) {
        eng_counter_add(r->m_lost, 1);
        eng_error("msg=\"redis lost what engage wrote\" why=\"%s\" generation=%s action=\"%s\"",
                  lost, r->gen,
                  r->opt.on_mark != NULL ? "rebuild it from postgresql"
                                         : "none here: engage run rebuilds it when it connects");
    }
    if (r->opt.on_mark != NULL)
        r->opt.on_mark(r->opt.mark_ctx, r->gen, lost != NULL, lost);
    return 0;
}

/* Warns once per process when Redis keeps no append-only file: a restart then loses every
 * write since the last snapshot, and engage has to rebuild Redis from PostgreSQL. */
static void warn_without_aof(struct redis_sink *r)
{
    static atomic_bool warned;
    const char *argv[] = {"CONFIG", "GET", "appendonly"};
    const size_t len[] = {6, 3, 10};
    redisReply *reply = redisCommandArgv(r->ctx, 3, argv, len);
    if (reply == NULL)
        return; /* the next command reports the connection */
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[1]->type == REDIS_REPLY_STRING &&
        strcmp(reply->element[1]->str, "no") == 0 && !atomic_exchange(&warned, true))
        eng_warn("msg=\"redis keeps no append-only file (appendonly no): a restart loses what "
                 "engage wrote since the last snapshot; engage then rebuilds it from "
                 "PostgreSQL and is not ready meanwhile\" host=%s port=%d",
                 r->url.host, r->url.port);
    freeReplyObject(reply);
}

/* Runs a command whose reply only says OK or an error, on a context of its own. */
static int setup_command(redisContext *c, const struct eng_redis_url *u, int argc,
                         const char **argv, struct eng_error *err)
{
    redisReply *reply = redisCommandArgv(c, argc, argv, NULL);
    if (reply == NULL)
        return eng_error_set(err, ENG_EIO, true, "redis %s failed on \"%s:%d\": %s", argv[0],
                             u->host, u->port, c->errstr);
    int rc = 0;
    if (reply->type == REDIS_REPLY_ERROR && reply_denied(reply->str))
        rc = eng_error_set(err, ENG_EDENIED, true, "redis %s failed: %s", argv[0], reply->str);
    else if (reply->type == REDIS_REPLY_ERROR)
        rc = eng_error_set(err, ENG_EIO, reply_error_retriable(reply->str), "redis %s failed: %s",
                           argv[0], reply->str);
    freeReplyObject(reply);
    return rc;
}

redisContext *eng_redis_connect(const struct eng_redis_url *u, uint32_t connect_timeout_ms,
                                uint32_t command_timeout_ms, struct eng_error *err)
{
    redisContext *c = redisConnectWithTimeout(u->host, u->port, ms_to_tv(connect_timeout_ms));
    if (c == NULL)
        eng_die("out of memory allocating a redis context");
    if (c->err != 0) {
        eng_error_set(err, ENG_EIO, true, "could not connect to redis at \"%s:%d\": %s", u->host,
                      u->port, c->errstr);
        goto fail;
    }
    if (redisSetTimeout(c, ms_to_tv(command_timeout_ms)) != REDIS_OK ||
        redisEnableKeepAlive(c) != REDIS_OK) {
        eng_error_set(err, ENG_EIO, true, "could not configure the redis connection: %s",
                      c->errstr);
        goto fail;
    }
    if (u->password != NULL) {
        const char *argv[3] = {"AUTH"};
        int argc = 1;
        if (u->user != NULL)
            argv[argc++] = u->user;
        argv[argc++] = u->password;
        if (setup_command(c, u, argc, argv, err) != 0)
            goto fail;
    }
    if (u->db != 0) {
        char db[16];
        put_i64(db, u->db);
        const char *argv[] = {"SELECT", db};
        if (setup_command(c, u, 2, argv, err) != 0)
            goto fail;
    }
    return c;
fail:
    redisFree(c);
    return NULL;
}

static int redis_open(struct eng_sink *s, struct eng_error *err)
{
    struct redis_sink *r = (struct redis_sink *)s;
    drop_connection(r);
    r->ctx = eng_redis_connect(&r->url, r->opt.connect_timeout_ms, r->opt.command_timeout_ms, err);
    int rc = r->ctx == NULL ? err->code : load_script(r, err);
    if (rc == 0) {
        warn_without_aof(r);
        rc = mark_sync(r, err);
    }
    if (rc != 0) {
        drop_connection(r);
        eng_counter_add(r->m_errors, 1);
        return rc;
    }
    eng_info("msg=\"redis sink connected\" host=%s port=%d db=%d generation=%s", r->url.host,
             r->url.port, r->url.db, r->gen);
    return 0;
}

static void redis_close(struct eng_sink *s)
{
    drop_connection((struct redis_sink *)s);
    ((struct redis_sink *)s)->mono_base_us = 0; /* read the server's clock again */
}

/* ---- clock ---- */

#define CLOCK_RESYNC_US INT64_C(60000000)
#define SKEW_WARN_US    INT64_C(2000000)

static bool parse_i64_text(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 18)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Now on the Redis server's clock, in microseconds. An engage whose own clock is minutes
 * off would otherwise build an empty top window or touch no bucket at all. */
static int server_now(struct redis_sink *r, int64_t *now, struct eng_error *err)
{
    if (r->opt.now_us != NULL) {
        *now = r->opt.now_us();
        return 0;
    }
    int64_t mono = eng_clock_mono_us();
    if (r->mono_base_us == 0 || mono - r->mono_base_us > CLOCK_RESYNC_US) {
        const char *argv[] = {"TIME"};
        const size_t len[] = {4};
        redisReply *reply;
        int rc = command(r, 1, argv, len, "time", &reply, err);
        if (rc != 0)
            return rc;
        int64_t sec, usec;
        bool ok = reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
                  parse_i64_text(reply->element[0]->str, reply->element[0]->len, &sec) &&
                  parse_i64_text(reply->element[1]->str, reply->element[1]->len, &usec);
        freeReplyObject(reply);
        if (!ok)
            return eng_error_set(err, ENG_EPROTO, false, "redis TIME: unexpected reply");
        r->server_base_us = sec * 1000000 + usec;
        r->mono_base_us = eng_clock_mono_us();
        int64_t skew = eng_clock_wall_us() - r->server_base_us;
        eng_gauge_set(r->m_skew, skew / 1000000);
        if (skew > SKEW_WARN_US || skew < -SKEW_WARN_US)
            eng_warn("msg=\"this machine's clock differs from redis's; the top window follows "
                     "redis's\" skew_ms=%lld",
                     (long long)(skew / 1000));
        mono = r->mono_base_us;
    }
    *now = r->server_base_us + (mono - r->mono_base_us);
    return 0;
}

/* ---- write ---- */

static void push_arg(struct redis_sink *r, int *argc, const char *p, size_t n)
{
    r->argv[*argc] = p;
    r->argvlen[*argc] = n;
    (*argc)++;
}

/* The event time the script orders by, clamped to what a double holds exactly (beyond year
 * 2255, events of one content are ordered by event_id alone). */
static int64_t order_ts(const struct eng_event *e)
{
    int64_t ts = e->event_ts_us;
    if (ts > MAX_EXACT - 1)
        ts = MAX_EXACT - 1;
    if (ts < -(MAX_EXACT - 1))
        ts = -(MAX_EXACT - 1);
    return ts;
}

static bool newer_than(const struct eng_event *a, const struct eng_event *b)
{
    int64_t ta = order_ts(a), tb = order_ts(b);
    return ta > tb || (ta == tb && a->event_id > b->event_id);
}

/* The minute bucket an event touches (its minute since the epoch), or NO_BUCKET. */
#define NO_BUCKET INT64_MIN
static int64_t bucket_minute(const struct eng_event *e, int64_t bucket_cutoff_us)
{
    char name[13];
    if (e->event_ts_us < bucket_cutoff_us || !minute_name(e->event_ts_us, name))
        return NO_BUCKET;
    int64_t m = e->event_ts_us / 60000000;
    return e->event_ts_us % 60000000 < 0 ? m - 1 : m;
}

static uint32_t slot_hash(uint64_t x, uint32_t mask)
{
    x *= UINT64_C(0x9E3779B97F4A7C15);
    return (uint32_t)(x >> 32) & mask;
}

/* True if event_id is already in this call's set of ids (and adds it). */
static bool id_repeated(struct redis_sink *r, int64_t event_id)
{
    for (uint32_t i = slot_hash((uint64_t)event_id, r->slot_mask);; i = (i + 1) & r->slot_mask) {
        struct id_slot *s = &r->ids[i];
        if (s->stamp != r->stamp) {
            *s = (struct id_slot){r->stamp, event_id};
            return false;
        }
        if (s->event_id == event_id)
            return true;
    }
}

/* The group of this call that e belongs to (same seen-set chunk, content and bucket),
 * created empty when it is the first. */
static struct call_group *group_of(struct redis_sink *r, const struct eng_event *e, int64_t minute)
{
    int64_t chunk = e->event_id >> SEEN_BITS;
    uint64_t h = (uint64_t)chunk * 31 + (uint64_t)(uint32_t)e->content_id;
    h = h * 31 + (uint64_t)minute;
    for (uint32_t i = slot_hash(h, r->slot_mask);; i = (i + 1) & r->slot_mask) {
        struct group_slot *s = &r->group_slots[i];
        if (s->stamp != r->stamp) {
            s->stamp = r->stamp;
            s->group = r->ngroups++;
            r->groups[s->group] = (struct call_group){.chunk = chunk,
                                                      .minute = minute,
                                                      .content_id = e->content_id,
                                                      .newest = UINT32_MAX};
            return &r->groups[s->group];
        }
        struct call_group *g = &r->groups[s->group];
        if (g->chunk == chunk && g->content_id == e->content_id && g->minute == minute)
            return g;
    }
}

static void next_stamp(struct redis_sink *r)
{
    if (++r->stamp == 0) { /* wrapped: no slot may look current */
        memset(r->ids, 0, ((size_t)r->slot_mask + 1) * sizeof(*r->ids));
        memset(r->group_slots, 0, ((size_t)r->slot_mask + 1) * sizeof(*r->group_slots));
        r->stamp = 1;
    }
}

/* Groups events [first, first + n) of b by (chunk, content, bucket) in the order the groups
 * first appear, each with its newest event first, into r->groups and r->order. With
 * all_json (or when an event_id repeats within the call, which then sets *all_json), every
 * event is a group of its own, in the batch's order. */
static void group_events(struct redis_sink *r, const struct eng_batch *b, uint32_t first,
                         uint32_t n, int64_t bucket_cutoff_us, bool *all_json)
{
    next_stamp(r);
    r->ngroups = 0;
    for (uint32_t k = first; k < first + n && !*all_json; k++) {
        const struct eng_event *e = &b->events[k];
        if (id_repeated(r, e->event_id)) {
            *all_json = true;
            break;
        }
        struct call_group *g = group_of(r, e, bucket_minute(e, bucket_cutoff_us));
        g->count++;
        if (g->newest == UINT32_MAX || newer_than(e, &b->events[g->newest]))
            g->newest = k;
        r->group_at[k - first] = (uint32_t)(g - r->groups);
    }
    if (*all_json) {
        for (uint32_t k = 0; k < n; k++) {
            const struct eng_event *e = &b->events[first + k];
            r->groups[k] = (struct call_group){.minute = bucket_minute(e, bucket_cutoff_us),
                                               .count = 1,
                                               .start = k,
                                               .newest = first + k};
            r->order[k] = first + k;
        }
        r->ngroups = n;
        return;
    }
    uint32_t at = 0;
    for (uint32_t q = 0; q < r->ngroups; q++) {
        r->groups[q].start = at;
        r->order[at] = r->groups[q].newest;
        at += r->groups[q].count;
        r->groups[q].count = 1; /* counts up again as the group fills */
    }
    for (uint32_t k = first; k < first + n; k++) {
        struct call_group *g = &r->groups[r->group_at[k - first]];
        if (k != g->newest)
            r->order[g->start + g->count++] = k;
    }
}

/* Pushes one group: chunk, content_id, bucket, then the time, id and JSON of its newest
 * event, the number of events and their seen-set bits (the newest's first). */
static void push_group(struct redis_sink *r, int *argc, const struct eng_batch *b,
                       const struct call_group *g, char *text)
{
    const struct eng_event *e = &b->events[g->newest];
    const int64_t fields[5] = {e->event_id >> SEEN_BITS, e->content_id, 0, order_ts(e),
                               e->event_id};
    for (int f = 0; f < 5; f++) {
        if (f == 2) {
            bool named = g->minute != NO_BUCKET && minute_name(e->event_ts_us, text);
            push_arg(r, argc, text, named ? 12 : 0);
            text += 13;
            continue;
        }
        size_t l = put_i64(text, fields[f]);
        push_arg(r, argc, text, l);
        text += l + 1;
    }
    push_arg(r, argc, eng_batch_json(b, e), e->json.len);
    size_t l = put_i64(text, g->count);
    push_arg(r, argc, text, l);
    for (uint32_t k = g->start; k < g->start + g->count; k++) {
        char *bit = r->num + (size_t)k * NUM_SLOT;
        int64_t id = b->events[r->order[k]].event_id;
        push_arg(r, argc, bit, put_i64(bit, id & (((int64_t)1 << SEEN_BITS) - 1)));
    }
}

/* Fills the argument vector for events [first, first + n) of b, with the top window when
 * with_window. Unless *all_json, events go in groups of one seen-set chunk, content and
 * bucket, with the JSON of the newest only (the script answers ENGAGE_RESEND when one of
 * those was applied before, for it then needs the others'). Returns argc. */
static int build_call(struct redis_sink *r, const struct eng_batch *b, uint32_t first, uint32_t n,
                      bool with_window, bool *all_json, int64_t bucket_cutoff_us)
{
    int argc = 0;

    group_events(r, b, first, n, bucket_cutoff_us, all_json);
    push_arg(r, &argc, "EVALSHA", 7);
    push_arg(r, &argc, r->sha, 40);
    push_arg(r, &argc, "0", 1);
    for (int i = 0; i < 4; i++)
        push_arg(r, &argc, r->header[i], strlen(r->header[i]));
    push_arg(r, &argc, r->gen, ENG_REDIS_GEN_LEN);
    push_arg(r, &argc, r->seq_text, SEQ_DIGITS);
    if (with_window)
        push_arg(r, &argc, r->nwin_text, strlen(r->nwin_text));
    else
        push_arg(r, &argc, "0", 1);
    if (*all_json)
        push_arg(r, &argc, "all", 3);
    else
        push_arg(r, &argc, "newest", 6);
    for (uint32_t w = 0; with_window && w < r->opt.top_minutes; w++)
        push_arg(r, &argc, r->window[w], 12);
    for (uint32_t q = 0; q < r->ngroups; q++)
        push_group(r, &argc, b, &r->groups[q], r->gnum + (size_t)q * GNUM_SLOT);
    return argc;
}

/* True when reply is the script's answer of success: {fresh, seq}, taken into *fresh and
 * r->seq. */
static bool applied(struct redis_sink *r, const redisReply *reply, uint64_t *fresh)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[0]->integer < 0 ||
        reply->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    *fresh += (uint64_t)reply->element[0]->integer;
    if (reply->element[1]->integer > r->seq)
        set_seq(r, reply->element[1]->integer);
    return true;
}

/* Applies events [first, first + n) of b in one call, reloading the script on NOSCRIPT
 * (after a server restart or SCRIPT FLUSH), taking up Redis's new generation on
 * ENGAGE_LOST (the loss is reported through mark_sync; the call then writes into the new
 * generation) and sending every event's JSON on ENGAGE_RESEND. Adds the number of events not
 * seen before to *fresh. */
static int run_call(struct redis_sink *r, const struct eng_batch *b, uint32_t first, uint32_t n,
                    int64_t bucket_cutoff_us, uint64_t *fresh, struct eng_error *err)
{
    bool all_json = false;
    for (int attempt = 0; attempt < 5; attempt++) {
        int argc = build_call(r, b, first, n, true, &all_json, bucket_cutoff_us);
        redisReply *reply;
        int rc = command(r, argc, r->argv, r->argvlen, "apply script", &reply, err);
        if (rc != 0)
            return rc;
        if (applied(r, reply, fresh)) {
            freeReplyObject(reply);
            return 0;
        }
        if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "ENGAGE_RESEND", 13) == 0) {
            freeReplyObject(reply);
            all_json = true;
            continue;
        }
        bool lost = reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "ENGAGE_LOST", 11) == 0;
        if (reply->type == REDIS_REPLY_ERROR) {
            eng_info("msg=\"redis sink %s\" reply=\"%s\"",
                     lost ? "found redis without what it wrote" : "reloading its script",
                     reply->str);
            freeReplyObject(reply);
            rc = lost ? mark_sync(r, err) : load_script(r, err);
            if (rc != 0)
                return rc;
            continue;
        }
        freeReplyObject(reply);
        return eng_error_set(err, ENG_EPROTO, false, "redis apply script: unexpected reply");
    }
    return eng_error_set(err, ENG_EIO, true,
                         "redis apply script: the script or the mark changed on every attempt");
}

/* Sends the call for events [first, first + n) of b without waiting for its answer. */
static int send_call(struct redis_sink *r, const struct eng_batch *b, uint32_t first, uint32_t n,
                     int64_t bucket_cutoff_us, struct eng_error *err)
{
    bool all_json = false;
    int argc = build_call(r, b, first, n, true, &all_json, bucket_cutoff_us);
    int done = 0;
    if (redisAppendCommandArgv(r->ctx, argc, r->argv, r->argvlen) != REDIS_OK)
        done = -1;
    while (done == 0) {
        if (redisBufferWrite(r->ctx, &done) != REDIS_OK)
            done = -1;
    }
    if (done > 0)
        return 0;
    int rc = eng_error_set(err, ENG_EIO, true, "redis apply script failed on \"%s:%d\": %s",
                           r->url.host, r->url.port, r->ctx->errstr);
    drop_connection(r);
    return rc;
}

/* Reads the answer to the oldest call send_call sent: 0 with *ok set (false: the answer
 * asks for the call again through run_call, which knows what to do), or an error. */
static int recv_call(struct redis_sink *r, uint64_t *fresh, bool *ok, struct eng_error *err)
{
    void *raw = NULL;
    if (redisGetReply(r->ctx, &raw) != REDIS_OK)
        raw = NULL;
    redisReply *reply;
    int rc = checked_reply(r, raw, "apply script", &reply, err);
    if (rc != 0)
        return rc;
    *ok = applied(r, reply, fresh);
    if (!*ok && reply->type != REDIS_REPLY_ERROR)
        rc = eng_error_set(err, ENG_EPROTO, false, "redis apply script: unexpected reply");
    freeReplyObject(reply);
    return rc;
}

static uint32_t slice_len(const struct redis_sink *r, const struct eng_batch *b, uint32_t first)
{
    uint32_t n = b->n - first;
    return n > r->opt.max_events_per_call ? r->opt.max_events_per_call : n;
}

/* Applies b in calls of at most max_events_per_call events, the next call sent before the
 * answer to the one before is read: Redis runs a call while this thread builds the next
 * (one at a time, it idled meanwhile). An answer that asks for its call again (NOSCRIPT,
 * ENGAGE_LOST, ENGAGE_RESEND) turns the rest of the batch over to run_call, one call at a
 * time; calls are idempotent, so one that was applied and is sent again changes nothing. */
static int apply_batch(struct redis_sink *r, const struct eng_batch *b, int64_t bucket_cutoff_us,
                       uint64_t *fresh, struct eng_error *err)
{
    uint32_t a = 0, na = slice_len(r, b, 0);
    int rc = send_call(r, b, a, na, bucket_cutoff_us, err);
    bool ok = true;
    while (rc == 0 && ok) {
        uint32_t c = a + na, nc = slice_len(r, b, c);
        if (nc > 0)
            rc = send_call(r, b, c, nc, bucket_cutoff_us, err);
        if (rc == 0)
            rc = recv_call(r, fresh, &ok, err);
        bool ok_c = true;
        if (rc == 0 && !ok && nc > 0)
            rc = recv_call(r, fresh, &ok_c, err); /* drained: the rest goes one by one */
        if (rc == 0 && !ok)
            rc = run_call(r, b, a, na, bucket_cutoff_us, fresh, err);
        if (rc == 0 && !ok_c)
            rc = run_call(r, b, c, nc, bucket_cutoff_us, fresh, err);
        for (uint32_t k = c + nc; rc == 0 && !ok && k < b->n; k += slice_len(r, b, k))
            rc = run_call(r, b, k, slice_len(r, b, k), bucket_cutoff_us, fresh, err);
        if (nc == 0 || !ok)
            break;
        a = c;
        na = nc;
    }
    if (rc != 0 && r->ctx != NULL)
        drop_connection(r); /* a call may still be on its way: its answer must not be read as
                             * the answer to the next write's (open connects again) */
    return rc;
}

static int redis_write(struct eng_sink *s, const struct eng_batch *b, struct eng_error *err)
{
    struct redis_sink *r = (struct redis_sink *)s;
    int rc;

    if (r->ctx == NULL) {
        rc = eng_error_set(err, ENG_EIO, true, "redis sink is not connected");
        goto fail;
    }
    for (uint32_t i = 0; i < b->n; i++) {
        int64_t id = b->events[i].event_id;
        if (id < 0 || id >= MAX_EXACT) {
            rc = eng_error_set(err, ENG_EINVAL, false,
                               "event_id %lld is outside the redis sink's range [0, 2^53)",
                               (long long)id);
            goto fail;
        }
    }

    /* The top window is the top_minutes minutes ending at the current wall-clock minute,
     * not at the newest event's minute: a live top-10 answers "what is hot right now". During
     * a backfill or after a stall the newest event may be hours old, and a window anchored
     * there would present old activity as current (and one event with a clock far ahead
     * would drag the window into the future). */
    int64_t now = 0;
    rc = server_now(r, &now, err);
    if (rc != 0)
        goto fail;
    for (uint32_t w = 0; w < r->opt.top_minutes; w++) {
        if (!minute_name(now - (int64_t)w * 60 * 1000000, r->window[w]))
            eng_die("wall clock out of range");
    }
    /* Events older than the bucket TTL relative to now do not touch buckets: their bucket
     * has expired (or would be recreated only to expire), and no top window reaches it. */
    int64_t cutoff = now - (int64_t)r->opt.bucket_ttl_s * 1000000;

    uint64_t fresh = 0;
    rc = apply_batch(r, b, cutoff, &fresh, err);
    if (rc != 0)
        goto fail;

    eng_counter_add(r->m_events, b->n);
    eng_counter_add(r->m_batches, 1);
    if (fresh < b->n)
        eng_counter_add(r->m_duplicates, b->n - fresh);
    return 0;

fail:
    eng_counter_add(r->m_errors, 1);
    eng_warn("msg=\"redis sink write failed\" retriable=%d error=\"%s\"", err ? err->retriable : 0,
             err ? err->msg : "");
    return rc;
}

static void redis_destroy(struct eng_sink *s)
{
    struct redis_sink *r = (struct redis_sink *)s;
    drop_connection(r);
    eng_redis_url_free(&r->url);
    free(r->script);
    free(r->argv);
    free(r->argvlen);
    free(r->num);
    free(r->gnum);
    free(r->groups);
    free(r->order);
    free(r->group_at);
    free(r->group_slots);
    free(r->ids);
    free(r);
}

static const struct eng_sink_ops redis_ops = {
    .name = "redis",
    .open = redis_open,
    .write = redis_write,
    .close = redis_close,
    .destroy = redis_destroy,
};

/* The caller's options over the defaults (a zero keeps the default), checked. */
static bool options_resolve(const struct eng_redis_options *opt, struct eng_redis_options *o,
                            struct eng_error *err)
{
    eng_redis_options_init(o);
    if (opt != NULL) {
        o->seen_ttl_s = opt->seen_ttl_s;
        o->now_us = opt->now_us;
        o->known_gen = opt->known_gen;
        o->on_mark = opt->on_mark;
        o->mark_ctx = opt->mark_ctx;
#define TAKE(f)                                                                                    \
    if (opt->f != 0)                                                                               \
        o->f = opt->f;
        TAKE(last_ttl_s)
        TAKE(bucket_ttl_s)
        TAKE(top_ttl_s)
        TAKE(top_minutes)
        TAKE(connect_timeout_ms)
        TAKE(command_timeout_ms)
        TAKE(max_events_per_call)
#undef TAKE
    }
    if (o->top_minutes > ENG_REDIS_MAX_TOP_MINUTES) {
        eng_error_set(err, ENG_EINVAL, false, "redis top window of %u minutes exceeds %d",
                      o->top_minutes, ENG_REDIS_MAX_TOP_MINUTES);
        return false;
    }
    if ((uint64_t)o->top_minutes * 60 > o->bucket_ttl_s) {
        eng_error_set(err, ENG_EINVAL, false,
                      "redis top window of %u minutes is longer than the bucket ttl (%u s)",
                      o->top_minutes, o->bucket_ttl_s);
        return false;
    }
    if (o->max_events_per_call > MAX_EVENTS_PER_CALL)
        o->max_events_per_call = MAX_EVENTS_PER_CALL;
    return true;
}

/* The script and one call's argument vector, sized for r->opt.max_events_per_call, and the
 * header arguments every call repeats. */
static void call_buffers_alloc(struct redis_sink *r)
{
    const struct eng_redis_options *o = &r->opt;
    const size_t check = sizeof(apply_script_check) - 1, seen = sizeof(apply_script_seen) - 1;
    r->script = eng_malloc(check + seen + sizeof(apply_script_write));
    memcpy(r->script, apply_script_check, check);
    memcpy(r->script + check, apply_script_seen, seen);
    memcpy(r->script + check + seen, apply_script_write, sizeof(apply_script_write));
    size_t cap = CALL_PREFIX + HEADER_ARGS + ENG_REDIS_MAX_TOP_MINUTES +
                 (size_t)EVENT_ARGS * o->max_events_per_call;
    r->argv = eng_calloc(cap, sizeof(*r->argv));
    r->argvlen = eng_calloc(cap, sizeof(*r->argvlen));
    size_t max = o->max_events_per_call;
    r->num = eng_malloc(NUM_SLOT * max);
    r->gnum = eng_malloc(GNUM_SLOT * max);
    r->groups = eng_calloc(max, sizeof(*r->groups));
    r->order = eng_calloc(max, sizeof(*r->order));
    r->group_at = eng_calloc(max, sizeof(*r->group_at));
    size_t slots = 2;
    while (slots < 2 * max)
        slots *= 2;
    r->group_slots = eng_calloc(slots, sizeof(*r->group_slots));
    r->ids = eng_calloc(slots, sizeof(*r->ids));
    r->slot_mask = (uint32_t)(slots - 1);
    put_i64(r->header[0], o->last_ttl_s);
    put_i64(r->header[1], o->bucket_ttl_s);
    put_i64(r->header[2], o->seen_ttl_s);
    put_i64(r->header[3], o->top_ttl_s);
    put_i64(r->nwin_text, o->top_minutes);
}

static void metrics_register(struct redis_sink *r)
{
    r->m_events = eng_metrics_counter("engage_sink_events_total", "sink=\"redis\"",
                                      "Events written to a sink.");
    r->m_batches = eng_metrics_counter("engage_sink_batches_total", "sink=\"redis\"",
                                       "Batches written to a sink.");
    r->m_errors = eng_metrics_counter("engage_sink_errors_total", "sink=\"redis\"",
                                      "Failed sink operations (connect or write).");
    r->m_skew = eng_metrics_gauge("engage_clock_skew_seconds", "against=\"redis\"",
                                  "This machine's wall clock minus the Redis server's");
    r->m_lost = eng_metrics_counter("engage_redis_lost_total", NULL,
                                    "Times Redis was found without what engage wrote to it.");
    r->m_duplicates =
        eng_metrics_counter("engage_redis_duplicates_total", NULL,
                            "Events the Redis sink skipped because they were already applied.");
}

struct eng_sink *eng_redis_sink_create(const char *url, const struct eng_redis_options *opt,
                                       struct eng_error *err)
{
    struct eng_redis_options o;
    if (!options_resolve(opt, &o, err))
        return NULL;
    if (strtoll(SEEN_LAST_BIT, NULL, 10) != ((int64_t)1 << SEEN_BITS) - 1)
        eng_die("SEEN_LAST_BIT does not match SEEN_BITS");

    struct redis_sink *r = eng_calloc(1, sizeof(*r));
    if (eng_redis_url_parse(url, &r->url, err) != 0) {
        free(r);
        return NULL;
    }
    r->base.ops = &redis_ops;
    r->opt = o;
    call_buffers_alloc(r);
    set_seq(r, 0);
    if (o.known_gen != NULL && strlen(o.known_gen) == ENG_REDIS_GEN_LEN)
        memcpy(r->known_gen, o.known_gen, sizeof(r->known_gen));
    r->opt.known_gen = NULL; /* the caller's string is not kept */
    metrics_register(r);
    return &r->base;
}

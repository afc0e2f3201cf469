/* engage mock-api, inside the module only: the server's state and the functions its files
 * share. mockapi.h is the interface; nothing outside src/mockapi/ includes this file.
 * Ownership: struct eng_mockapi owns everything it points to; every field below `lock` is
 * read and written under it unless its comment says otherwise.
 *
 * The files, by concern:
 *   mockapi.c   start and stop, the listeners and the manager thread that takes the API
 *               listener down and up
 *   control.c   the fault settings: the control document, GET /control
 *   requests.c  libmicrohttpd's callbacks: request bodies within their caps, routing,
 *               responses
 *   events.c    POST /events: the body parsed, the fault dice rolled and acted on
 *   store.c     what was received: the id table, first bodies, the request log, counters,
 *               and the GET endpoints that read them */
#ifndef ENG_MOCKAPI_INTERNAL_H
#define ENG_MOCKAPI_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "../core/buf.h"
#include "mockapi.h"

#define LOG_IDS          16                 /* event ids kept per logged request (the first ones) */
#define CONTROL_MAX_BODY ((size_t)64 << 10) /* a control document is a few hundred bytes */
#define NOT_STORED       UINT32_MAX
#define EMPTY_ID         INT64_MIN

enum outcome { OUT_ANSWERED, OUT_RESET, OUT_HANG, OUT_LOST_ACK, OUT_CLOSED };

struct log_entry {
    uint64_t seq;
    int64_t t_ms;    /* wall clock, ms since the epoch, when the request arrived */
    int64_t mono_ms; /* monotonic, ms since the mock started */
    int64_t duration_ms;
    int status; /* 0 when nothing was answered */
    enum outcome outcome;
    uint32_t n;
    uint32_t n_ids;
    int64_t ids[LOG_IDS];
    char key[96];
};

struct id_entry {
    int64_t id; /* EMPTY_ID: free slot */
    uint64_t keyhash;
    uint32_t off; /* body in the arena, NOT_STORED when over the cap */
    uint32_t len;
};

struct listener {
    struct eng_mockapi *m;
    bool control;
};

struct eng_mockapi {
    struct eng_mockapi_options opt;
    char *require_token;

    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; wakes delays, hangs and the manager */
    struct eng_mockapi_faults faults;
    uint64_t rng;
    uint64_t epoch; /* bumped when the API listener goes down or the mock stops */
    bool stopping;
    int64_t up_at_us; /* when down with down_ms: the monotonic time to come back */
    int64_t start_us;

    /* API listener: owned by the manager thread (and start/stop). */
    struct listener api_l, control_l;
    struct MHD_Daemon *api;
    int api_fd;
    bool api_up;
    struct sockaddr_storage api_addr;
    socklen_t api_addrlen;
    uint16_t port;
    struct MHD_Daemon *control;
    int control_fd;
    uint16_t control_port;
    pthread_t manager;
    bool manager_started;
    unsigned active;      /* requests being handled on the API listener */
    size_t body_bytes;    /* request bodies held now, all connections (<= opt.max_body_total) */
    uint64_t over_budget; /* requests refused 503 because of max_body_total */

    /* Received events. */
    struct id_entry *tab;
    size_t tab_cap; /* power of two */
    size_t tab_n;
    struct eng_buf arena; /* first bodies, one per line */

    struct log_entry *ring;
    size_t ring_next;
    size_t ring_n;
    uint64_t seq;

    uint64_t received, duplicates, requests, events_rejected, invalid, key_mismatches,
        body_mismatches, missing_key, resets, hangs, lost_acks, arrays, bytes, not_stored,
        in_flight, max_in_flight, max_batch, unauthorized, full;
    uint64_t status_count[600];
};

struct req_ctx {
    struct eng_buf body;
    size_t reserved;  /* bytes of m->body_bytes this request holds */
    bool over_budget; /* max_body_total was reached while its body came in */
    bool too_big;
    bool counted_active;
    int64_t t0_us;
};

struct span {
    size_t off;
    size_t len;
};

/* The parsed body of a POST /events: the event ids and the text of each event. */
struct parsed {
    json_t *root;
    bool array;
    uint32_t n;
    int64_t *ids;
    struct span *spans;
    char error[300]; /* set when the body is not acceptable */
};

static inline struct timespec mono_deadline(int64_t at_us)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(at_us / 1000000);
    ts.tv_nsec = (long)(at_us % 1000000) * 1000;
    return ts;
}

/* ---- requests.c ---- */

/* Queues a response taking buf's bytes. */
enum MHD_Result mock_respond(struct MHD_Connection *c, unsigned status, struct eng_buf *buf,
                             const char *ctype, const char *retry_after);
/* {"error":msg} */
enum MHD_Result mock_respond_error(struct MHD_Connection *c, unsigned status, const char *msg);
/* Takes j. */
enum MHD_Result mock_respond_json(struct MHD_Connection *c, unsigned status, json_t *j);
/* libmicrohttpd's request and completion callbacks; cls is the struct listener. */
enum MHD_Result mock_on_request(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls);
void mock_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                       enum MHD_RequestTerminationCode toe);

/* ---- control.c ---- */

/* The faults as GET /control shows them; called with the lock held. */
json_t *mock_faults_json(const struct eng_mockapi_faults *f, const char *token);

/* ---- events.c ---- */

/* Answers a complete POST /events (or does not, as the faults say). */
enum MHD_Result mock_post_events(struct eng_mockapi *m, struct MHD_Connection *c,
                                 struct req_ctx *rc);

/* ---- store.c ---- */

/* A fresh, empty id table of cap slots (a power of two); the old one is not freed. */
void mock_tab_alloc(struct eng_mockapi *m, size_t cap);
/* Forgets every event, body, logged request and counter; called with the lock held. */
void mock_clear_stats_locked(struct eng_mockapi *m);
/* Records the events of an accepted request. Returns false when the mock is full. */
bool mock_record_events(struct eng_mockapi *m, const struct req_ctx *rc, const struct parsed *p,
                        const char *key, bool lost_ack, uint32_t *fresh_out, uint32_t *dups_out);
/* Adds a request to the log (and counts its status); called without the lock. */
void mock_log_request(struct eng_mockapi *m, const struct req_ctx *rc, const char *key, int status,
                      enum outcome oc, uint32_t n, const int64_t *ids, uint32_t n_ids);
enum MHD_Result mock_get_stats(struct eng_mockapi *m, struct MHD_Connection *c);
enum MHD_Result mock_get_ids(struct eng_mockapi *m, struct MHD_Connection *c);
enum MHD_Result mock_get_events(struct eng_mockapi *m, struct MHD_Connection *c);
enum MHD_Result mock_get_log(struct eng_mockapi *m, struct MHD_Connection *c);

#endif

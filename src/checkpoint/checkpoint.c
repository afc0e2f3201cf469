/* engage: the checkpoint (see checkpoint.h). */
#include <stddef.h>

#include "../core/log.h"
#include "checkpoint.h"

void eng_checkpoint_init(struct eng_checkpoint *cp, const struct eng_checkpoint_ops *ops,
                         uint64_t acked)
{
    cp->ops = *ops;
    cp->acked = acked;
    cp->failed_saves = 0;
    eng_error_clear(&cp->last_error);
}

bool eng_checkpoint_tick(struct eng_checkpoint *cp)
{
    uint64_t durable = cp->ops.durable(cp->ops.ctx);
    if (durable <= cp->acked)
        return false;
    struct eng_error err;
    eng_error_clear(&err);
    int rc = cp->ops.save(cp->ops.ctx, durable, &err);
    if (rc == ENG_EAGAIN)
        return false; /* not yet (a save done too recently), not a failure */
    if (rc != 0) {
        /* Logged on the 1st, 2nd, 4th, 8th... failure in a row: a disk that stays full
         * must not flood the log, and every retry is counted in failed_saves. */
        cp->failed_saves++;
        if ((cp->failed_saves & (cp->failed_saves - 1)) == 0)
            eng_error("msg=\"could not save state; checkpoint held\" failed_saves=%u "
                      "error=\"%s\"",
                      cp->failed_saves, err.msg);
        cp->last_error = err;
        return false;
    }
    if (cp->failed_saves > 0)
        eng_info("msg=\"state saved again; checkpoint moves on\" failed_saves=%u",
                 cp->failed_saves);
    cp->failed_saves = 0;
    cp->acked = durable;
    cp->ops.ack(cp->ops.ctx, durable);
    return true;
}

/*
 * pgmon_storage: the storage trigger of sql/004_storage.sql (pgmon.storage_notify) in C.
 *
 * Statement level, after INSERT, UPDATE or TRUNCATE on a table of a limited role;
 * tgargs[0] is the table owner's name. It sends pg_notify('pgmon_storage',
 * owner US relid US pg_total_relation_size(relid)) (US = 0x1F) at most once per session,
 * owner and quarter second (SLOTS_PER_SEC slots of the clock: not of the transaction's
 * start, which a DO block or procedure committing in a loop keeps for all its
 * transactions, so it would be heard once), exactly as the
 * PL/pgSQL version does, but without PL/pgSQL's per-call costs (function environment,
 * expression state per transaction, the trigger-argument array, the key string and its
 * lookup): measured on pgbench TPC-B-like (four trigger calls per transaction, fsync off,
 * 2 cores), the PL/pgSQL version costs 7 % of the throughput at the median, this one too
 * little to tell from run-to-run noise (bench/STORAGE.md).
 *
 * It stays silent, leaving the role to the agent's periodic recount, when
 * max_prepared_transactions > 0 (PREPARE TRANSACTION refuses a transaction that executed
 * NOTIFY; PostgreSQL docs, "PREPARE TRANSACTION") and when the notification queue is half
 * full (once full, every commit that notifies fails; docs, "NOTIFY").
 *
 * The owners it notified in this slot are remembered in backend memory; an aborted
 * (sub)transaction discards its notifications (src/backend/commands/async.c), so an abort
 * forgets them all and the next write notifies again.
 *
 * Built with PGXS (Makefile beside it) for each PostgreSQL major whose server headers are
 * installed; sql/004_storage.sql uses it when $libdir/pgmon_storage loads, and the
 * PL/pgSQL version otherwise.
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/fmgrprotos.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

/* Owners notified in the current slot; more distinct owners than this in one slot and
 * one session only cost extra notifications (deduplicated per transaction anyway). */
#define REMEMBERED 8

/* A quarter second: a tenant committing ~150 MB/s in 1 MB transactions went 30-290 MB
 * past its hard limit while the slot was a whole second (bench/STORAGE.md); four
 * notifications a second per writing session cost its commits nothing measurable. */
#define SLOTS_PER_SEC 4

static int64 remembered_slot = -1;
static int	remembered_count = 0;
static char remembered[REMEMBERED][NAMEDATALEN];

static void
forget_all(void)
{
	remembered_slot = -1;
	remembered_count = 0;
}

static void
on_xact(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		forget_all();
}

static void
on_subxact(SubXactEvent event, SubTransactionId mySubid,
		   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		forget_all();
}

void		_PG_init(void);

void
_PG_init(void)
{
	RegisterXactCallback(on_xact, NULL);
	RegisterSubXactCallback(on_subxact, NULL);
}

PG_FUNCTION_INFO_V1(pgmon_storage_notify);

Datum
pgmon_storage_notify(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *owner;
	int64		slot;
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("pgmon_storage_notify: not called by trigger manager")));
	if (trigdata->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("pgmon_storage_notify: expects one argument, the table owner")));

	owner = trigdata->tg_trigger->tgargs[0];
	slot = GetCurrentTimestamp() / (USECS_PER_SEC / SLOTS_PER_SEC);
	if (slot != remembered_slot)
	{
		remembered_slot = slot;
		remembered_count = 0;
	}
	for (i = 0; i < remembered_count; i++)
		if (strncmp(remembered[i], owner, NAMEDATALEN) == 0)
			return PointerGetDatum(NULL);

	if (max_prepared_xacts == 0 &&
		DatumGetFloat8(DirectFunctionCall1(pg_notification_queue_usage, (Datum) 0)) < 0.5)
	{
		Oid			relid = RelationGetRelid(trigdata->tg_relation);
		int64		bytes = DatumGetInt64(DirectFunctionCall1(pg_total_relation_size,
															  ObjectIdGetDatum(relid)));
		char	   *payload = psprintf("%s\x1f%u\x1f" INT64_FORMAT, owner, relid, bytes);

		Async_Notify("pgmon_storage", payload);
		pfree(payload);
	}

	if (remembered_count < REMEMBERED)
		strlcpy(remembered[remembered_count++], owner, NAMEDATALEN);
	return PointerGetDatum(NULL);
}

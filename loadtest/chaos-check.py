#!/usr/bin/env python3
"""The accounting of a chaos run (loadtest/chaos.sh): what the clients received, joined with what
PostgreSQL stored.

Input: the per-request records written by `sluice-loadtest chaos --records FILE` (one JSON object
per line), the harness's summary (`--json-file`), the fault timeline, and a PostgreSQL database to
read the `messages` table from (psql). Every request's prompt names its request id, so its user
message is found by content; its answer is the assistant message that follows it in its
conversation (ordered by created_at, id). For every completed answer (one terminal event,
`generation.done` with stop/length) the user message and the assistant message must each be
stored exactly once, and the assistant text must equal the concatenation of the deltas the client
received. Generations that ended otherwise (owner_lost, upstream_timeout, ...) and requests
without a generation (refused, cut before generation.started) are reported by what was stored for
them, not counted as missing.

Prints a table and one JSON line; exit status 1 when a must-be-zero figure is not zero.
"""
import argparse
import collections
import csv
import io
import json
import subprocess
import sys


def load_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def stored_messages(args):
    query = ("COPY (SELECT m.conversation_id, m.id, m.role, m.content, coalesce(m.finish_reason, ''), "
             "(extract(epoch from m.created_at) * 1000000)::bigint, u.external_id "
             "FROM messages m JOIN conversations c ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id "
             "ORDER BY m.conversation_id, m.created_at, m.id) TO STDOUT WITH (FORMAT csv)")
    output = subprocess.run(
        [args.psql, "-h", args.host, "-p", str(args.port), "-U", args.user, "-d", args.database, "-X", "-q", "-c", query],
        check=True, capture_output=True, text=True).stdout
    rows = []
    for row in csv.reader(io.StringIO(output)):
        rows.append({"conversation_id": row[0], "id": row[1], "role": row[2], "content": row[3], "finish_reason": row[4],
                     "created_us": int(row[5]), "user": row[6]})
    return rows


def decoded(text_json):
    return json.loads('"' + text_json + '"')


def ending(record):
    if not record["terminals"]:
        return "none"
    first = record["terminals"][0]
    if first["type"] == "done":
        return "done:" + first.get("finish_reason", "?") + (":" + first["code"] if "code" in first else "")
    return "error:" + first.get("code", "?")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--timeline")
    parser.add_argument("--psql", default="psql")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="sluice")
    parser.add_argument("--database", default="sluice")
    parser.add_argument("--extra", help="JSON object merged into the result (run settings)")
    parser.add_argument("--json-out")
    args = parser.parse_args()

    records = load_records(args.records)
    summary = json.load(open(args.summary))
    rows = stored_messages(args)

    # Stored messages by conversation, in order; user messages by content.
    by_conversation = collections.defaultdict(list)
    for row in rows:
        by_conversation[row["conversation_id"]].append(row)
    user_rows = collections.defaultdict(list)
    for rows_of in by_conversation.values():
        for index, row in enumerate(rows_of):
            row["index"] = index
            if row["role"] == "user":
                user_rows[row["content"]].append(row)

    def answers_after(row):
        """The assistant messages between a user message and the next user message."""
        following = []
        for later in by_conversation[row["conversation_id"]][row["index"] + 1:]:
            if later["role"] == "user":
                break
            following.append(later)
        return following

    prompts = {record["prompt"] for record in records}
    figures = collections.Counter()
    stored_for = collections.defaultdict(collections.Counter)  # ending -> what was stored
    problems = []
    for record in records:
        stored_users = user_rows.get(record["prompt"], [])
        if record.get("generation_id") is None:
            key = "request " + record["outcome"] + (":" + record["refusal_code"] if record.get("refusal_code") else "")
            stored_for[key]["requests"] += 1
            stored_for[key]["user messages stored"] += len(stored_users)
            stored_for[key]["answers stored"] += sum(len(answers_after(row)) for row in stored_users)
            if len(stored_users) > 1:
                figures["duplicated_user_messages"] += len(stored_users) - 1
                problems.append(("duplicated user message", record["request_id"]))
            continue
        conversation_ok = all(row["conversation_id"] == record.get("conversation_id") for row in stored_users)
        if not conversation_ok:
            figures["user_message_in_wrong_conversation"] += 1
            problems.append(("user message in another conversation", record["request_id"]))
        answers = [answer for row in stored_users for answer in answers_after(row)]
        if not record["completed"]:
            key = "generation " + ending(record)
            stored_for[key]["generations"] += 1
            stored_for[key]["user messages stored"] += len(stored_users)
            stored_for[key]["answers stored"] += len(answers)
            if len(stored_users) > 1:
                figures["duplicated_user_messages"] += len(stored_users) - 1
                problems.append(("duplicated user message", record["request_id"]))
            if len(answers) > 1:
                figures["duplicated_assistant_messages"] += len(answers) - 1
                problems.append(("duplicated assistant message", record["request_id"]))
            continue
        figures["completed"] += 1
        if not stored_users:
            figures["missing_user_messages"] += 1
            problems.append(("user message missing", record["request_id"]))
        elif len(stored_users) > 1:
            figures["duplicated_user_messages"] += len(stored_users) - 1
            problems.append(("duplicated user message", record["request_id"]))
        # The answer: found by its text in the conversation (answers differ by prompt), so an
        # answer stored late (after the next question) is still tied to its generation.
        text = decoded(record["text_json"])
        exact = [row for row in by_conversation.get(record.get("conversation_id"), [])
                 if row["role"] == "assistant" and row["content"] == text]
        if len(exact) > 1:
            figures["duplicated_assistant_messages"] += len(exact) - 1
            problems.append(("duplicated assistant message", record["request_id"]))
        if not exact:
            if answers:
                figures["text_mismatches"] += 1
                problems.append(("stored answer differs from the deltas received", record["request_id"]))
            else:
                figures["missing_assistant_messages"] += 1
                problems.append(("assistant message missing", record["request_id"]))
            continue
        if exact[0]["finish_reason"] != record["terminals"][0].get("finish_reason"):
            figures["finish_reason_mismatches"] += 1
            problems.append(("stored finish_reason differs", record["request_id"]))
        elif len(exact) == 1 and len(stored_users) == 1:
            figures["completed_stored_exactly"] += 1

    # Stored messages no request accounts for.
    figures["stored_messages"] = len(rows)
    figures["stored_conversations"] = len(by_conversation)
    figures["orphan_user_messages"] = sum(1 for row in rows if row["role"] == "user" and row["content"] not in prompts)

    must_be_zero = {
        "lost_deltas_in_completed": summary["missing_in_completed"],
        "duplicated_deltas_in_completed": summary["repeated_in_completed"],
        "done_seq_mismatches": summary["done_seq_mismatches"],
        "generations_without_a_terminal_event": summary["without_terminal"],
        "generations_with_several_terminal_events": summary["several_terminals"],
        "stored_missing": figures["missing_user_messages"] + figures["missing_assistant_messages"],
        "stored_duplicated": figures["duplicated_user_messages"] + figures["duplicated_assistant_messages"],
        "stored_text_mismatches": figures["text_mismatches"] + figures["finish_reason_mismatches"]
        + figures["user_message_in_wrong_conversation"],
        "harness_timed_out": int(bool(summary.get("timed_out"))),
    }
    timeline = []
    if args.timeline:
        with open(args.timeline) as f:
            timeline = [line.rstrip("\n") for line in f if line.strip()]

    print("== chaos: what the clients received")
    print(f"requests {summary['requests']}: generations {summary['generations']}, refused {sum(summary['refused'].values())} "
          f"{dict(sorted(summary['refused'].items()))}, cut before generation.started {summary['cut_before_start']}, "
          f"never answered {summary['never_answered']}")
    print(f"answers completed {summary['completed']}, of which resumed {summary['completed_resumed']} "
          f"(resumes sent {summary['resumes']}: planned drops {summary['planned_drops']}, connections lost mid-answer {summary['cuts']})")
    print(f"endings: {dict(sorted(summary['endings'].items()))}")
    print(f"deltas {summary['deltas']}, unplanned disconnects {summary['unplanned_disconnects']}, stray messages {summary['stray']}")
    if args.extra:
        extra = json.loads(args.extra)
        print(f"write queues: messages taken over from a dead gateway's journal {extra.get('messages_taken_over_from_dead_journals', '?')}, "
              f"storage write retries {extra.get('storage_write_retries', '?')}")
    print("== what PostgreSQL stored")
    print(f"messages {figures['stored_messages']} in {figures['stored_conversations']} conversations; "
          f"completed answers stored exactly once with the received text: {figures['completed_stored_exactly']} of {figures['completed']}; "
          f"orphan user messages {figures['orphan_user_messages']}")
    for key in sorted(stored_for):
        print(f"  {key}: " + ", ".join(f"{name} {count}" for name, count in stored_for[key].items()))
    print("== must be zero")
    width = max(len(name) for name in must_be_zero)
    for name, value in must_be_zero.items():
        print(f"  {name:<{width}}  {value}{'' if value == 0 else '   <-- FAIL'}")
    for problem, request in problems[:20]:
        print(f"  {problem}: {request}")
    if len(problems) > 20:
        print(f"  … {len(problems) - 20} more")
    if timeline:
        print("== faults")
        for line in timeline:
            print("  " + line)

    result = {
        "client": summary, "stored": dict(figures), "stored_for_other_outcomes": {k: dict(v) for k, v in stored_for.items()},
        "must_be_zero": must_be_zero, "timeline": timeline, "ok": all(value == 0 for value in must_be_zero.values()),
    }
    if args.extra:
        result["settings"] = json.loads(args.extra)
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()

/// The PostgreSQL schema as numbered migrations, and the SQL the storage runs.
///
/// Timestamps cross the wire as microseconds since 1970 (`int8`), never as `Date`: PostgresNIO
/// truncates `Date` to microseconds, which can move a cursor by one microsecond and skip a row.
enum PostgresSchema {
    struct Migration: Sendable {
        var version: Int
        /// Run one by one in a single transaction (the extended protocol takes one statement at a time).
        var statements: [String]
    }

    /// Serialises migrations and partition creation across instances starting at once.
    /// ("sluice" in ASCII, then a number per purpose.)
    static let migrationLockKey: Int64 = 0x736C_7569_6365_0001
    static let partitionLockKey: Int64 = 0x736C_7569_6365_0002

    static let createMigrationsTable = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """

    static let migrations: [Migration] = [
        Migration(version: 1, statements: [
            """
            CREATE TABLE users (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                external_id text NOT NULL UNIQUE,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE conversations (
                id uuid PRIMARY KEY,
                user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                title text,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{}'
            )
            """,
            // id last so that ties in updated_at page in a stable order.
            "CREATE INDEX conversations_user_updated ON conversations (user_id, updated_at DESC, id DESC)",
            // A partitioned table's primary key must contain the partition key, so messages are
            // unique by (id, created_at): a retried write carries both and conflicts.
            """
            CREATE TABLE messages (
                id uuid NOT NULL,
                conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
                role text NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
                content text NOT NULL,
                tool_calls jsonb,
                finish_reason text,
                prompt_tokens integer,
                completion_tokens integer,
                model text,
                created_at timestamptz NOT NULL,
                PRIMARY KEY (id, created_at)
            ) PARTITION BY RANGE (created_at)
            """,
            "CREATE INDEX messages_conversation_created ON messages (conversation_id, created_at, id)",
            // No foreign key to messages: it would need the message's created_at as well (the
            // partitioned key), which the tool layer does not have yet.
            """
            CREATE TABLE tool_executions (
                id uuid PRIMARY KEY,
                message_id uuid NOT NULL,
                tool_name text NOT NULL,
                input jsonb,
                output jsonb,
                duration_ms integer,
                status text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX tool_executions_tool_created ON tool_executions (tool_name, created_at DESC)",
            // tokens_limit NULL: no limit.
            """
            CREATE TABLE user_quotas (
                user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
                tokens_used bigint NOT NULL DEFAULT 0,
                tokens_limit bigint,
                reset_at timestamptz
            )
            """,
        ]),
        // Finished jobs (the queue itself lives in Redis), and tool runs tied to generations.
        Migration(version: 2, statements: [
            """
            CREATE TABLE jobs (
                id text PRIMARY KEY,
                kind text NOT NULL,
                user_external_id text NOT NULL,
                priority text NOT NULL,
                state text NOT NULL,
                input jsonb,
                result text,
                result_type text,
                error text,
                attempts integer NOT NULL,
                max_attempts integer NOT NULL,
                schedule text,
                created_at timestamptz NOT NULL,
                started_at timestamptz,
                finished_at timestamptz
            )
            """,
            "CREATE INDEX jobs_user_created ON jobs (user_external_id, created_at DESC)",
            "ALTER TABLE tool_executions ALTER COLUMN message_id DROP NOT NULL",
            """
            ALTER TABLE tool_executions
                ADD COLUMN generation_id text,
                ADD COLUMN conversation_id uuid,
                ADD COLUMN user_external_id text,
                ADD COLUMN call_id text
            """,
            "CREATE INDEX tool_executions_generation ON tool_executions (generation_id, created_at)",
        ]),
        // What a job spent, and how much of it is already in the submitter's user_quotas.
        Migration(version: 3, statements: [
            "ALTER TABLE jobs ADD COLUMN tokens_used bigint NOT NULL DEFAULT 0, ADD COLUMN tokens_counted bigint NOT NULL DEFAULT 0",
        ]),
        // Usage of generations that store no message (the OpenAI-compatible front door), kept
        // by id so that a retried write counts once; deleted after `UsageRecord.retention`.
        Migration(version: 4, statements: [
            """
            CREATE TABLE usage_records (
                id text PRIMARY KEY,
                user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                tokens bigint NOT NULL CHECK (tokens >= 0),
                created_at timestamptz NOT NULL
            )
            """,
            "CREATE INDEX usage_records_created ON usage_records (created_at)",
        ]),
    ]

    /// Adds what a job spent and was not counted yet to its submitter's `user_quotas`, once: the
    /// job's row is locked, so two archivers of the same job count it once between them.
    /// $1: the job id.
    static let countJobUsage = """
        WITH counted AS (
            UPDATE jobs j SET tokens_counted = j.tokens_used
            FROM (SELECT id, tokens_counted AS before FROM jobs WHERE id = $1 FOR UPDATE) b
            WHERE j.id = b.id AND j.tokens_used > b.before
            RETURNING j.user_external_id, j.tokens_used - b.before AS delta
        ), new_user AS (
            INSERT INTO users (external_id) SELECT user_external_id FROM counted
            ON CONFLICT (external_id) DO NOTHING RETURNING id
        ), the_user AS (
            SELECT id FROM new_user UNION ALL SELECT u.id FROM users u JOIN counted c ON u.external_id = c.user_external_id
        )
        INSERT INTO user_quotas AS q (user_id, tokens_used)
        SELECT (SELECT id FROM the_user LIMIT 1), delta FROM counted
        ON CONFLICT (user_id) DO UPDATE SET tokens_used = q.tokens_used + EXCLUDED.tokens_used
        """

    /// Usage records in one statement: $1 the records as a JSON array. Users are created as in
    /// `appendBatch` (one created at the same moment by another instance comes back as
    /// `unresolved`, and the batch is retried); records already there (a retry) are not inserted,
    /// and only the inserted ones are added to `user_quotas.tokens_used`, which stops at the
    /// largest bigint instead of failing.
    static let recordUsage = """
        WITH rec_in AS (
            SELECT * FROM json_to_recordset($1::json) AS r(id text, user_external_id text, tokens int8, created_us int8)
        ), new_users AS (
            INSERT INTO users (external_id)
            SELECT DISTINCT user_external_id FROM rec_in
            ON CONFLICT (external_id) DO NOTHING
            RETURNING id, external_id
        ), batch_users AS (
            SELECT id, external_id FROM new_users
            UNION ALL
            SELECT id, external_id FROM users WHERE external_id IN (SELECT user_external_id FROM rec_in)
        ), inserted AS (
            INSERT INTO usage_records (id, user_id, tokens, created_at)
            SELECT r.id, bu.id, r.tokens, \(Self.timestamp("r.created_us"))
            FROM rec_in r JOIN batch_users bu ON bu.external_id = r.user_external_id
            ON CONFLICT (id) DO NOTHING
            RETURNING user_id, tokens
        ), counted AS (
            INSERT INTO user_quotas AS q (user_id, tokens_used)
            SELECT user_id, LEAST(sum(tokens), 9223372036854775807)::int8 FROM inserted GROUP BY user_id
            ON CONFLICT (user_id) DO UPDATE SET tokens_used = CASE
                WHEN q.tokens_used > 9223372036854775807 - EXCLUDED.tokens_used THEN 9223372036854775807
                ELSE q.tokens_used + EXCLUDED.tokens_used END
        )
        SELECT
            (SELECT count(*) FROM inserted)::int8,
            (SELECT count(*) FROM rec_in WHERE user_external_id NOT IN (SELECT external_id FROM batch_users))::int8
        """

    /// `timestamptz` from an `int8` count of microseconds since 1970 (exact below 2^53).
    static func timestamp(_ microseconds: String) -> String {
        "(timestamptz 'epoch' + (\(microseconds))::float8 * interval '1 microsecond')"
    }

    /// `int8` microseconds since 1970 from a `timestamptz` (extract returns numeric: exact).
    static func microseconds(_ column: String) -> String {
        "(extract(epoch FROM \(column)) * 1000000)::int8"
    }

    /// One statement creating the missing partitions, under an advisory lock so that two
    /// instances do not race on the same name. Only integers go into the text.
    static func ensurePartitions(_ months: [PartitionMonth]) -> String {
        var body = "DO $sluice$\nBEGIN\n  PERFORM pg_advisory_xact_lock(\(Self.partitionLockKey));\n"
        for month in Set(months).sorted() {
            body += """
                  IF to_regclass('\(month.tableName)') IS NULL THEN
                    CREATE TABLE \(month.tableName) PARTITION OF messages
                      FOR VALUES FROM ('\(month.lowerBound)') TO ('\(month.upperBound)');
                  END IF;

                """
        }
        body += "END\n$sluice$"
        return body
    }

    /// The whole batch in one statement: $1 the conversations and $2 the messages, as JSON
    /// arrays (one parameter each, any batch size, NULLs included). Data-modifying CTEs see the
    /// same snapshot, so rows inserted here are passed along through RETURNING.
    ///
    /// - users: inserted if missing. A user created at the same moment by another instance is not
    ///   visible to this statement; such messages come back as `unresolved` and the batch is
    ///   retried (everything here is idempotent).
    /// - conversations: inserted if missing, else `updated_at` moves forward — only when the
    ///   conversation belongs to the same user (else its messages are `rejected`).
    /// - messages: inserted unless already there (a retry); only new rows are RETURNed, so
    ///   usage is added to `user_quotas` once.
    static let appendBatch = """
        WITH conv_in AS (
            SELECT * FROM json_to_recordset($1::json)
                AS c(id uuid, user_external_id text, title text, first_us int8, last_us int8)
        ), msg_in AS (
            SELECT * FROM json_to_recordset($2::json)
                AS m(id uuid, conversation_id uuid, role text, content text, finish_reason text,
                     prompt_tokens integer, completion_tokens integer, model text, created_us int8)
        ), new_users AS (
            INSERT INTO users (external_id)
            SELECT DISTINCT user_external_id FROM conv_in
            ON CONFLICT (external_id) DO NOTHING
            RETURNING id, external_id
        ), batch_users AS (
            SELECT id, external_id FROM new_users
            UNION ALL
            SELECT id, external_id FROM users WHERE external_id IN (SELECT user_external_id FROM conv_in)
        ), upserted AS (
            INSERT INTO conversations AS c (id, user_id, title, created_at, updated_at)
            SELECT ci.id, bu.id, ci.title, \(Self.timestamp("ci.first_us")), \(Self.timestamp("ci.last_us"))
            FROM conv_in ci JOIN batch_users bu ON bu.external_id = ci.user_external_id
            ON CONFLICT (id) DO UPDATE
                SET updated_at = GREATEST(c.updated_at, EXCLUDED.updated_at),
                    title = COALESCE(c.title, EXCLUDED.title)
                WHERE c.user_id = EXCLUDED.user_id
            RETURNING c.id, c.user_id
        ), inserted AS (
            INSERT INTO messages (id, conversation_id, role, content, finish_reason,
                                  prompt_tokens, completion_tokens, model, created_at)
            SELECT m.id, m.conversation_id, m.role, m.content, m.finish_reason,
                   m.prompt_tokens, m.completion_tokens, m.model, \(Self.timestamp("m.created_us"))
            FROM msg_in m JOIN upserted u ON u.id = m.conversation_id
            ON CONFLICT (id, created_at) DO NOTHING
            RETURNING conversation_id, role, prompt_tokens, completion_tokens
        ), usage AS (
            INSERT INTO user_quotas AS q (user_id, tokens_used)
            SELECT u.user_id, sum(COALESCE(i.prompt_tokens, 0) + COALESCE(i.completion_tokens, 0))
            FROM inserted i JOIN upserted u ON u.id = i.conversation_id
            WHERE i.role = 'assistant'
            GROUP BY u.user_id
            ON CONFLICT (user_id) DO UPDATE SET tokens_used = q.tokens_used + EXCLUDED.tokens_used
            RETURNING q.user_id
        )
        SELECT
            (SELECT count(*) FROM inserted)::int8,
            (SELECT count(*) FROM msg_in m JOIN conv_in ci ON ci.id = m.conversation_id
              WHERE ci.user_external_id IN (SELECT external_id FROM batch_users)
                AND m.conversation_id NOT IN (SELECT id FROM upserted))::int8,
            (SELECT count(*) FROM msg_in m JOIN conv_in ci ON ci.id = m.conversation_id
              WHERE ci.user_external_id NOT IN (SELECT external_id FROM batch_users))::int8,
            (SELECT count(*) FROM usage)::int8
        """
}

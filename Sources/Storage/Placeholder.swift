import PostgresNIO
import SQLiteNIO

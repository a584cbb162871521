import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import org.postgresql.PGStatement;

/**
 * The JDBC client of tests/test_clients.py: run through the pooler, prints key=value lines.
 *
 * <p>Arguments: JDBC URL, user, password, name of an empty table (id int, v text).
 */
public final class PoolerClient {
    private PoolerClient() {}

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String table = args[3];
        try (Connection conn = DriverManager.getConnection(url, args[1], args[2])) {
            preparedStatement(conn);
            portalReads(conn);
            batchInsert(conn, table);
        }
        System.out.println("done=true");
    }

    /** Past prepareThreshold (5) executions pgjdbc switches to a named server statement. */
    private static void preparedStatement(Connection conn) throws Exception {
        long sum = 0;
        boolean serverPrepared = false;
        try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int * 2")) {
            for (int i = 1; i <= 12; i++) {
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    sum += rs.getInt(1);
                }
            }
            serverPrepared = ps.unwrap(PGStatement.class).isUseServerPrepare();
            // While the statement is open its named server statement exists on the server.
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery(
                            "SELECT count(*) FROM pg_prepared_statements"
                                    + " WHERE statement = 'SELECT $1::int * 2'")) {
                rs.next();
                System.out.println("server_statements=" + rs.getInt(1));
            }
        }
        System.out.println("prepared_sum=" + sum);
        System.out.println("server_prepare=" + serverPrepared);
    }

    /** A 1000-row result read 100 rows at a time from a portal inside a transaction. */
    private static void portalReads(Connection conn) throws Exception {
        conn.setAutoCommit(false);
        long rows = 0;
        long sum = 0;
        int openPortals = -1;
        try (PreparedStatement ps = conn.prepareStatement(
                "SELECT g, repeat('x', 50) FROM generate_series(1, 1000) g ORDER BY g")) {
            ps.setFetchSize(100);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    rows++;
                    sum += rs.getInt(1);
                    if (rows == 150) {
                        // Mid-read, the suspended protocol-level portal is on the server.
                        openPortals = countPortals(conn);
                    }
                }
            }
        }
        conn.commit();
        conn.setAutoCommit(true);
        System.out.println("fetch_rows=" + rows);
        System.out.println("fetch_sum=" + sum);
        System.out.println("open_portals=" + openPortals);
    }

    private static int countPortals(Connection conn) throws Exception {
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery(
                        "SELECT count(*) FROM pg_cursors"
                                + " WHERE NOT is_holdable AND statement LIKE 'SELECT g, repeat(%'")) {
            rs.next();
            return rs.getInt(1);
        }
    }

    /** executeBatch of 500 inserts in one transaction. */
    private static void batchInsert(Connection conn, String table) throws Exception {
        conn.setAutoCommit(false);
        int updated = 0;
        try (PreparedStatement ps =
                conn.prepareStatement("INSERT INTO " + table + " (id, v) VALUES (?, ?)")) {
            for (int i = 1; i <= 500; i++) {
                ps.setInt(1, i);
                ps.setString(2, "row " + i);
                ps.addBatch();
            }
            for (int n : ps.executeBatch()) {
                updated += n;
            }
        }
        conn.commit();
        conn.setAutoCommit(true);
        System.out.println("batch_updated=" + updated);
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*), sum(id) FROM " + table)) {
            rs.next();
            System.out.println("batch_count=" + rs.getLong(1));
            System.out.println("batch_sum=" + rs.getLong(2));
        }
    }
}

// Readiness probe for the test Cassandra: runs `SELECT release_version FROM system.local` over the native protocol
// with the DataStax Java driver that ships in Cassandra's own runtime class path, prints the version, exits 0.
// Compiled once by tests/services/cassandra.sh into target/cassandra/probe, run as: java -cp "<probe>:<lib>/*" CqlCheck <host> <port>
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;

public class CqlCheck {
    public static void main(String[] args) {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        try (Cluster cluster = Cluster.builder()
                .addContactPoint(host)
                .withPort(port)
                .withoutJMXReporting()
                .withoutMetrics()
                .build();
             Session session = cluster.connect()) {
            Row row = session.execute("SELECT release_version FROM system.local").one();
            System.out.println("release_version " + row.getString("release_version"));
        } catch (RuntimeException e) {
            System.out.println("not ready: " + e);
            System.exit(1);
        }
    }
}

// Downloads every file of a remote folder with JSch (Debian's libjsch-java),
// as older ETL tools do. Usage: JschFetch HOST PORT USER KEY REMOTE LOCAL
// JSch's own log goes to stderr, so a failed negotiation shows its reason.
import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Logger;
import com.jcraft.jsch.Session;

public class JschFetch {
    public static void main(String[] args) throws Exception {
        JSch.setLogger(new Logger() {
            public boolean isEnabled(int level) {
                return level >= Logger.INFO;
            }

            public void log(int level, String message) {
                System.err.println("jsch: " + message);
            }
        });
        JSch jsch = new JSch();
        jsch.addIdentity(args[3]);
        Session session = jsch.getSession(args[2], args[0], Integer.parseInt(args[1]));
        session.setConfig("StrictHostKeyChecking", "no");
        session.setConfig("PreferredAuthentications", "publickey");
        session.connect(20000);
        ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
        sftp.connect(20000);
        for (Object o : sftp.ls(args[4])) {
            ChannelSftp.LsEntry entry = (ChannelSftp.LsEntry) o;
            if (!entry.getAttrs().isDir()) {
                sftp.get(args[4] + "/" + entry.getFilename(), args[5] + "/" + entry.getFilename());
            }
        }
        sftp.disconnect();
        session.disconnect();
    }
}

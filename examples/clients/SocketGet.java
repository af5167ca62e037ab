// A plain java.net.Socket (an SSLSocket for https): one HTTP/1.1 request written by hand,
// and what the application gets back.
//
//   java SocketGet GET URL | java SocketGet POST URL BYTES
//
// Prints the response's status line, or the exception (toString()) and each cause; exits 1 then.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.Socket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import javax.net.ssl.SSLSocketFactory;

public class SocketGet {
    public static void main(String[] args) throws Exception {
        URI uri = URI.create(args[1]);
        byte[] body = args[0].equals("POST") ? new byte[Integer.parseInt(args[2])] : new byte[0];
        String head = args[0] + " " + uri.getPath() + " HTTP/1.1\r\nHost: " + uri.getHost()
                + "\r\nContent-Length: " + body.length + "\r\nConnection: close\r\n\r\n";
        boolean tls = uri.getScheme().equals("https");
        int port = uri.getPort() != -1 ? uri.getPort() : tls ? 443 : 80; // -1: the URL names none
        try (Socket socket = tls
                ? SSLSocketFactory.getDefault().createSocket(uri.getHost(), port)
                : new Socket(uri.getHost(), port)) {
            OutputStream out = socket.getOutputStream();
            out.write(head.getBytes(StandardCharsets.US_ASCII));
            out.write(body);
            out.flush();
            BufferedReader in = new BufferedReader(new InputStreamReader(socket.getInputStream(), StandardCharsets.US_ASCII));
            String status = in.readLine();
            System.out.println(status == null ? "end of stream before any response" : status);
        } catch (Exception e) {
            System.out.println(e);
            for (Throwable cause = e.getCause(); cause != null; cause = cause.getCause()) {
                System.out.println("caused by: " + cause);
            }
            System.exit(1);
        }
    }
}
